//! Legacy PC devices: the 16550 UART, the i8042 with a PS/2 keyboard (and
//! the reset line), and the ACPI platform registers (sleep, reset).
//! Their registers are accessed on vCPU threads, through each device's mutex.

pub mod acpi_pm;
pub mod i8042;
pub mod serial;
