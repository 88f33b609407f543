//! KVM state: one VM per guest ([`vm`]) and one thread per vCPU ([`vcpu`]).

pub mod vcpu;
pub mod vm;
