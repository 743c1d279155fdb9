/* resetloop: says so, then resets the VM through the ACPI reset
 * register, on every boot, for ever: the VMM spends most of its time
 * between two boots, where commands must not be lost. */
.include "lib.S"

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $banner, %esi
    call puts
    jmp acpi_reset

.section .rodata
banner: .asciz "resetting\n"
