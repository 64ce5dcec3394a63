//! Retries through a fault-injecting proxy between the client and moto: the first N
//! requests get a 503, a throttling error or an HTML 500, then requests are forwarded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kiln_ec2::testkit::{MotoOptions, MotoServer};
use kiln_ec2::{
    CallOutcome, ClientConfig, DescribeImagesRequest, Ec2Client, Ec2Error, RetryPolicy,
    TransportFailure,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Recorder, moto};

#[derive(Clone, Copy, Debug)]
enum Fault {
    Unavailable503,
    Throttle,
    Html500,
    Invalid,
}

impl Fault {
    fn response(self) -> String {
        let (status, ctype, body) = match self {
            Fault::Unavailable503 => ("503 Service Unavailable", "text/plain", String::new()),
            Fault::Throttle => (
                "400 Bad Request",
                "text/xml",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>proxy-throttle</RequestID></Response>".to_string(),
            ),
            Fault::Html500 => (
                "500 Internal Server Error",
                "text/html",
                "<html><body><h1>500 Internal Server Error</h1></body></html>".to_string(),
            ),
            Fault::Invalid => (
                "400 Bad Request",
                "text/xml",
                "<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>bad value</Message></Error></Errors><RequestID>proxy-invalid</RequestID></Response>".to_string(),
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

/// A proxy that answers the first `faults.len()` requests itself and forwards the rest.
struct FaultProxy {
    endpoint: String,
    seen: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fault_proxy(upstream: SocketAddr, faults: Vec<Fault>) -> FaultProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let faults = Arc::new(faults);
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            let faults = faults.clone();
            tokio::spawn(async move {
                let _ = serve(client, upstream, counter, faults).await;
            });
        }
    });
    FaultProxy {
        endpoint,
        seen,
        task,
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    counter: Arc<AtomicUsize>,
    faults: Arc<Vec<Fault>>,
) -> std::io::Result<()> {
    let request = read_request(&mut client).await?;
    let n = counter.fetch_add(1, Ordering::SeqCst);
    if let Some(fault) = faults.get(n) {
        client.write_all(fault.response().as_bytes()).await?;
        client.shutdown().await?;
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&request).await?;
    tokio::io::copy_bidirectional(&mut client, &mut up).await?;
    Ok(())
}

/// One HTTP request: the head, then Content-Length bytes of body (bounded).
async fn read_request(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(buf);
        }
        if buf.len() > 1 << 20 {
            return Ok(buf);
        }
    }
}

fn moto_addr(moto: &MotoServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], moto.port()))
}

fn client_via(moto: &MotoServer, endpoint: &str, attempts: u32, rec: &Recorder) -> Ec2Client {
    Ec2Client::new(
        "us-east-1",
        moto.credentials(),
        ClientConfig {
            endpoint: Some(endpoint.to_string()),
            retry: RetryPolicy {
                max_attempts: attempts,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(100),
            },
            observer: Some(rec.observer()),
            ..Default::default()
        },
    )
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_through_faults() {
    let moto = moto(MotoOptions {
        load_default_amis: false,
        ..Default::default()
    })
    .await;

    // 503, throttled, HTML 500, then forwarded: the call succeeds on attempt 4.
    let faults = vec![Fault::Unavailable503, Fault::Throttle, Fault::Html500];
    let n = faults.len();
    let proxy = fault_proxy(moto_addr(&moto), faults).await;
    let rec = Recorder::default();
    let ec2 = client_via(&moto, &proxy.endpoint, 5, &rec);
    let keys = ec2
        .describe_key_pairs(&[], &[], false)
        .await
        .expect("succeeds after the faults");
    assert!(keys.is_empty());
    let records = rec.for_action("DescribeKeyPairs");
    assert_eq!(records.len(), n + 1, "{records:#?}");
    assert_eq!(
        records.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        records[0].outcome,
        CallOutcome::ApiError {
            code: "HTTP 503".into()
        }
    );
    assert_eq!(records[0].http_status, Some(503));
    assert_eq!(
        records[1].outcome,
        CallOutcome::ApiError {
            code: "RequestLimitExceeded".into()
        }
    );
    assert_eq!(records[1].request_id.as_deref(), Some("proxy-throttle"));
    assert_eq!(
        records[2].outcome,
        CallOutcome::ApiError {
            code: "HTTP 500".into()
        }
    );
    assert!(records[..n].iter().all(|r| r.will_retry));
    assert!(records[n].outcome.is_ok() && !records[n].will_retry);
    assert_eq!(records[n].http_status, Some(200));
    assert_eq!(ec2.stats().calls, 1);
    assert_eq!(ec2.stats().attempts, (n + 1) as u64);
    assert_eq!(proxy.seen.load(Ordering::SeqCst), n + 1);

    // A non-retryable error comes back at once.
    let proxy = fault_proxy(moto_addr(&moto), vec![Fault::Invalid]).await;
    let rec = Recorder::default();
    let ec2 = client_via(&moto, &proxy.endpoint, 5, &rec);
    let e = ec2.describe_key_pairs(&[], &[], false).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"), "{e:?}");
    assert!(
        matches!(&e, Ec2Error::Api(a) if a.attempts == 1 && a.request_id.as_deref() == Some("proxy-invalid"))
    );
    assert_eq!(rec.records().len(), 1);
    assert!(!rec.records()[0].will_retry);

    // Throttled beyond the budget: the typed throttling error, after exactly max attempts.
    let proxy = fault_proxy(moto_addr(&moto), vec![Fault::Throttle; 10]).await;
    let rec = Recorder::default();
    let ec2 = client_via(&moto, &proxy.endpoint, 3, &rec);
    let e = ec2.describe_key_pairs(&[], &[], false).await.unwrap_err();
    assert!(e.is_throttled(), "{e:?}");
    assert_eq!(e.api().map(|a| a.attempts), Some(3));
    assert!(e.to_string().contains("after 3 attempts"), "{e}");
    assert_eq!(rec.records().len(), 3);
    assert_eq!(proxy.seen.load(Ordering::SeqCst), 3);

    // 5xx beyond the budget: an API error that says how often it was tried.
    let proxy = fault_proxy(moto_addr(&moto), vec![Fault::Unavailable503; 10]).await;
    let rec = Recorder::default();
    let ec2 = client_via(&moto, &proxy.endpoint, 2, &rec);
    let e = ec2.describe_key_pairs(&[], &[], false).await.unwrap_err();
    assert!(
        matches!(&e, Ec2Error::Api(a) if a.status == 503 && a.attempts == 2),
        "{e:?}"
    );

    // An answer over the size bound is refused, not retried.
    let rec = Recorder::default();
    let small = Ec2Client::new(
        "us-east-1",
        moto.credentials(),
        ClientConfig {
            max_response_bytes: 64,
            observer: Some(rec.observer()),
            ..moto.client_config()
        },
    )
    .unwrap();
    let e = small
        .describe_images(&DescribeImagesRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Ec2Error::TooLarge { limit: 64, .. }), "{e:?}");
    assert_eq!(
        rec.records()[0].outcome,
        CallOutcome::Transport {
            kind: TransportFailure::TooLarge
        }
    );
    assert_eq!(rec.records().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let rec = Recorder::default();
    let ec2 = Ec2Client::new(
        "us-east-1",
        kiln_ec2::Credentials::new("AKID", kiln_ec2::Secret::new("s3cr3t-value"), None),
        ClientConfig {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
            },
            observer: Some(rec.observer()),
            ..Default::default()
        },
    )
    .unwrap();
    let e = ec2.describe_key_pairs(&[], &[], false).await.unwrap_err();
    let Ec2Error::Transport {
        attempts, endpoint, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(*attempts, 3);
    assert!(endpoint.contains(&port.to_string()));
    assert!(e.to_string().contains("could not reach EC2"), "{e}");
    assert!(!e.to_string().contains("s3cr3t-value"));
    let records = rec.records();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.outcome
        == CallOutcome::Transport {
            kind: TransportFailure::Connect
        }
        && r.http_status.is_none()));
}
