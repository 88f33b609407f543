//! KVM state: one VM per guest ([`vm`]: the `Vm` that owns its fd, mappings and
//! interrupt routes), one thread per vCPU ([`vcpu`]), what each vCPU exit means
//! ([`exits`]), and the in-kernel interrupt plumbing ([`interrupts`]).

pub mod exits;
pub mod interrupts;
pub mod vcpu;
pub mod vm;
