//! The driver image under KVM. The VMM offers no NIC yet (`[[nic]]` is refused), so
//! this checks what can be checked without one: the image is the default for the
//! `driver` role, boots, and refuses to run without a NIC, by name and reason, while
//! its ip peer is left alone.

use compart_tests::{require_kvm, topology, Capture};
use compart_vmm::vstate::vcpu::Failure;
use compart_vmm::GuestState;

#[test]
fn the_driver_image_is_the_driver_roles_default_and_refuses_to_run_without_a_nic() {
    if !require_kvm() {
        return;
    }
    let t = topology(
        r#"
        [[guest]]
        name = "drv"
        role = "driver"
        memory_mib = 8
        on_failure = "stop-all"

        [[guest]]
        name = "ip"
        role = "ip"
        image = "idle"

        [[channel]]
        a = "drv"
        b = "ip"
        "#,
    );
    let capture = Capture::default();
    let outcome = compart_vmm::start(&t, capture.sink()).unwrap().wait();
    match outcome.state("drv") {
        Some(GuestState::Failed(Failure::Panic { message })) => assert!(
            message.contains("driver: the topology gives this guest no NIC"),
            "{message}"
        ),
        other => panic!("drv: {other:?}"),
    }
    assert_eq!(outcome.state("ip"), Some(&GuestState::Stopped));
}
