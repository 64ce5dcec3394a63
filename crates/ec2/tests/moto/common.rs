//! Helpers shared by the moto tests.

use std::sync::{Arc, Mutex};

use kiln_ec2::testkit::{MotoOptions, MotoServer};
use kiln_ec2::{CallRecord, ClientConfig, Ec2Client, Observer};

/// Starts moto or fails the test with the reason (never skips).
pub async fn moto(opts: MotoOptions) -> MotoServer {
    match MotoServer::start_with(opts).await {
        Ok(m) => m,
        Err(e) => panic!("moto_server did not start: {e}"),
    }
}

/// Collects every observer record.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<CallRecord>>>);

impl Recorder {
    pub fn observer(&self) -> Observer {
        let records = self.0.clone();
        Arc::new(move |r: &CallRecord| records.lock().unwrap().push(r.clone()))
    }

    pub fn records(&self) -> Vec<CallRecord> {
        self.0.lock().unwrap().clone()
    }

    pub fn for_action(&self, action: &str) -> Vec<CallRecord> {
        self.records()
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }
}

/// A client for moto with an observer installed.
pub fn observed_client(moto: &MotoServer, region: &str, rec: &Recorder) -> Ec2Client {
    let config = ClientConfig {
        observer: Some(rec.observer()),
        ..moto.client_config()
    };
    Ec2Client::new(region, moto.credentials(), config).expect("client")
}

/// A run id unique enough for one test process.
pub fn run_id(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{tag}-{}-{nanos}", std::process::id())
}
