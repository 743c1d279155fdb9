//! Legacy PC devices: the 16550 UART, the i8042 reset line and the ACPI
//! platform registers (sleep control/status, reset).

pub mod acpi_pm;
pub mod i8042;
pub mod serial;
