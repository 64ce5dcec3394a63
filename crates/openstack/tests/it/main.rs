//! One integration-test binary (one link, and its tests share the 2 test threads): every test
//! starts its own real peers on 127.0.0.1 through kiln_openstack::testkit. Install them with
//! `tools/setup.d/glance.sh`.

mod glance;
mod keystone;
