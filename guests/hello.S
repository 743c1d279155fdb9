/* hello: prints one line on the serial port and powers off. Used by the
 * start-up benchmark (exec → first serial byte) and the basic KVM test. */
.include "lib.S"

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $message, %esi
    call puts
    jmp acpi_poweroff

.section .rodata
message: .asciz "Hello from the vmpod tiny guest\n"
