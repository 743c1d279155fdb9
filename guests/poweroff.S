/* poweroff: reads the sleep control register from the FADT and SLP_TYP
 * from \_S5_ in the DSDT, says what it found, and powers off with them. */
.include "lib.S"

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $found_s5, %esi
    call puts
    call s5_sleep_type
    call putdec
    mov $found_register, %esi
    call puts
    mov $SIG_FACP, %eax
    call find_table
    mov FADT_SLEEP_CONTROL_ADDR(%eax), %eax
    call puthex
    mov $newline, %esi
    call puts
    jmp acpi_poweroff

.section .rodata
found_s5: .asciz "poweroff guest: \\_S5_ sleep type "
found_register: .asciz ", sleep control register "
newline: .asciz "\n"
