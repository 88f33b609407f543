//! Panic reporting: message and location go to the VMM, which applies the guest's
//! failure policy. Also the symbols the prebuilt `core` expects from an unwinder it
//! never uses (guests are built with `panic = "abort"`).

use compart_abi::ports;

// Guests build with `panic = "abort"`. The host workspace builds this crate only to
// lint it, with unwinding and std elsewhere in its graph, which has its own handler.
#[cfg_attr(panic = "abort", panic_handler)]
#[cfg_attr(not(panic = "abort"), allow(dead_code))]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::channel::hang_up();
    let len = match info.location() {
        Some(l) => crate::console::write_panic(format_args!(
            "panicked at {}:{}:{}: {}",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        )),
        None => crate::console::write_panic(format_args!("panicked: {}", info.message())),
    };
    // SAFETY: PANIC is a ring-3 port; its value is the report's length in the
    // console page.
    unsafe { crate::outl(ports::PANIC, len as u32) };
    loop {
        crate::ring0::halt_only();
    }
}

/// Never called: nothing unwinds in a guest.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Never called: nothing unwinds in a guest.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    loop {
        crate::ring0::halt_only();
    }
}
