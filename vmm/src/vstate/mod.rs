//! KVM state: one VM per guest ([`vm`]), one thread per vCPU ([`vcpu`]), and what
//! each vCPU exit means ([`exits`]).

pub mod exits;
pub mod vcpu;
pub mod vm;
