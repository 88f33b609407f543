//! The driver image under KVM without a NIC: it is the default image of the `driver`
//! role, boots, and refuses to run without a NIC, by name and reason, while its ip
//! peer is left alone. (With a NIC it is proved end to end in `net.rs`.)

use compart_tests::{boot, kvm_test, topology};
use compart_vmm::vstate::exits::{Failure, FailureKind};
use compart_vmm::GuestState;

kvm_test! {
    fn the_driver_image_is_the_driver_roles_default_and_refuses_to_run_without_a_nic() {
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
        let (vmm, _capture) = boot(&t);
        let outcome = vmm.wait();
        match outcome.state("drv") {
            Some(GuestState::Failed(Failure {
                kind: FailureKind::Panic { message },
                ..
            })) => assert!(
                message.contains("driver: the topology gives this guest no NIC"),
                "{message}"
            ),
            other => panic!("drv: {other:?}"),
        }
        assert_eq!(outcome.state("ip"), Some(&GuestState::Stopped));
    }
}
