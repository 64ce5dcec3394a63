//! Waiters that cannot succeed: a timeout names what was awaited and the last state seen;
//! an unreachable state fails at once. The short timeouts are fine: the tests assert the
//! failure and its message, not how long anything took.

use std::time::Duration;

use kiln_ec2::testkit::MotoOptions;
use kiln_ec2::{
    BlockDeviceMapping, EbsBlockDevice, Ec2Error, RegisterImageRequest, RunInstanceRequest,
    WaitOptions,
};

use crate::common::moto;

fn short() -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(5),
        interval: Duration::from_millis(100),
        max_interval: Duration::from_millis(400),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_fail_clearly() {
    let moto = moto(MotoOptions {
        load_default_amis: false,
        ..Default::default()
    })
    .await;
    let ec2 = moto.client("us-east-1").unwrap();

    // A running instance, which never stops by itself.
    let image = ec2
        .register_image(&RegisterImageRequest {
            name: "kiln-waiter-test".into(),
            architecture: Some("x86_64".into()),
            root_device_name: "/dev/sda1".into(),
            virtualization_type: Some("hvm".into()),
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: "/dev/sda1".into(),
                ebs: Some(EbsBlockDevice {
                    volume_size: Some(8),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("register image");
    let inst = ec2
        .run_instance(&RunInstanceRequest {
            image_id: image.clone(),
            instance_type: "t3.micro".into(),
            ..Default::default()
        })
        .await
        .expect("run");

    // Three waits that cannot succeed, side by side: an AMI that never appears, the
    // running instance to stop, a snapshot that does not exist.
    let opts = short();
    let (ami, stop, snap) = tokio::join!(
        ec2.wait_image_available("ami-0123456789abcdef0", &opts),
        ec2.wait_instance_stopped(&inst.instance_id, &opts),
        ec2.wait_snapshot_completed("snap-0123456789abcdef0", &opts),
    );

    let e = ami.unwrap_err();
    let Ec2Error::WaitTimeout {
        what,
        last_state,
        waited,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(
        what,
        "AMI ami-0123456789abcdef0 in us-east-1 to be available"
    );
    assert_eq!(last_state, "not visible yet");
    assert!(*waited >= Duration::from_secs(5));
    let msg = e.to_string();
    assert!(
        msg.starts_with("timed out after 5")
            && msg.contains("waiting for AMI ami-0123456789abcdef0 in us-east-1 to be available (last state: not visible yet)"),
        "{msg}"
    );
    assert!(e.is_wait_timeout());

    let e = stop.unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "waiting for instance {} to be stopped (last state: running)",
            inst.instance_id
        )),
        "{e}"
    );

    let e = snap.unwrap_err();
    assert!(e.is_wait_timeout(), "{e:?}");
    assert!(
        e.to_string()
            .contains("snapshot snap-0123456789abcdef0 to be completed"),
        "{e}"
    );

    // A terminated instance will never run: fails at once, not at the (long) deadline.
    ec2.terminate_instances(std::slice::from_ref(&inst.instance_id))
        .await
        .expect("terminate");
    let e = ec2
        .wait_instance_running(&inst.instance_id, &WaitOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Ec2Error::WaitFailed { state, .. } if state == "terminated"),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "gave up waiting for instance {} to be running: it is terminated",
            inst.instance_id
        )),
        "{e}"
    );
}
