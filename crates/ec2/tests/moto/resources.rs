//! The operations the main flow does not reach: spot launches, pagination across pages,
//! volumes left behind by `DeleteOnTermination = false`, RegisterImage.

use std::time::Duration;

use kiln_ec2::testkit::MotoOptions;
use kiln_ec2::{
    BlockDeviceMapping, ClientConfig, EbsBlockDevice, Ec2Client, Filter, RegisterImageRequest,
    ResourceKind, RunInstanceRequest, SpotOptions, TagQuery, Tags, WaitOptions,
};

use crate::common::{Recorder, moto, run_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_pagination_and_volumes() {
    let moto = moto(MotoOptions {
        load_default_amis: false,
        ..Default::default()
    })
    .await;
    let rec = Recorder::default();
    let ec2 = Ec2Client::new(
        "us-east-1",
        moto.credentials(),
        ClientConfig {
            page_size: Some(5),
            observer: Some(rec.observer()),
            ..moto.client_config()
        },
    )
    .unwrap();
    let run = run_id("res");
    let mut tags = Tags::new();
    tags.insert("kiln:run".into(), run.clone());

    let image = ec2
        .register_image(&RegisterImageRequest {
            name: format!("kiln-{run}"),
            architecture: Some("x86_64".into()),
            root_device_name: "/dev/xvda".into(),
            virtualization_type: Some("hvm".into()),
            ena_support: Some(true),
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                ebs: Some(EbsBlockDevice {
                    volume_size: Some(8),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .expect("register image");
    // moto's RegisterImage keeps only the name and description (AWS applies the rest):
    // tag the image explicitly.
    ec2.create_tags(std::slice::from_ref(&image), &tags)
        .await
        .expect("tag image");
    let img = ec2
        .describe_image(&image)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(img.name.as_deref(), Some(format!("kiln-{run}").as_str()));
    assert_eq!(img.tags.get("kiln:run"), Some(&run));

    // Spot, with a price cap, and a volume that survives termination.
    let spot = ec2
        .run_instance(&RunInstanceRequest {
            image_id: image.clone(),
            instance_type: "t3.micro".into(),
            spot: Some(SpotOptions {
                max_price: Some("0.05".into()),
            }),
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                ebs: Some(EbsBlockDevice {
                    volume_size: Some(10),
                    delete_on_termination: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            tags: tags.clone(),
            volume_tags: tags.clone(),
            ..Default::default()
        })
        .await
        .expect("spot launch");
    assert_eq!(spot.lifecycle.as_deref(), Some("spot"), "{spot:?}");

    // Twelve more instances: with pages of 5 the listing takes three pages.
    for _ in 0..12 {
        ec2.run_instance(&RunInstanceRequest {
            image_id: image.clone(),
            instance_type: "t3.nano".into(),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .expect("launch");
    }
    let before = rec.for_action("DescribeInstances").len();
    let all = ec2
        .describe_instances(&[], &[Filter::tag("kiln:run", run.clone())])
        .await
        .expect("list");
    assert_eq!(all.len(), 13);
    let pages = rec.for_action("DescribeInstances").len() - before;
    assert_eq!(pages, 3, "13 instances in pages of 5");

    // The kept volume outlives its instance; it is found by tag and deleted; again →
    // NotFound.
    let vol = spot.volumes.first().expect("root volume").volume_id.clone();
    ec2.terminate_instances(std::slice::from_ref(&spot.instance_id))
        .await
        .unwrap();
    ec2.wait_instance_terminated(
        &spot.instance_id,
        &WaitOptions::with_timeout(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    let vols = ec2
        .describe_volumes(std::slice::from_ref(&vol), &[])
        .await
        .expect("volume");
    assert_eq!(vols[0].state, "available", "{vols:?}");
    let found = ec2
        .find_tagged(&TagQuery::equals("kiln:run", &run))
        .await
        .unwrap();
    assert!(
        found
            .iter()
            .any(|r| r.kind == ResourceKind::Volume && r.id == vol && r.is_live()),
        "{found:#?}"
    );
    ec2.delete_volume(&vol).await.expect("delete volume");
    let e = ec2.delete_volume(&vol).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");

    // Deregister, then the image no longer shows up anywhere.
    ec2.deregister_image(&image).await.unwrap();
    assert!(ec2.describe_image(&image).await.unwrap().is_none());
    let found = ec2
        .find_tagged(&TagQuery::equals("kiln:run", &run))
        .await
        .unwrap();
    assert!(!found.iter().any(|r| r.kind == ResourceKind::Image));
    assert_eq!(rec.records().len() as u64, ec2.stats().attempts);
}
