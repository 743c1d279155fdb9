/* powerbutton: waits for the ACPI power button (vmpod's Generic Event
 * Device: IOAPIC pin 5, event register at 0xfeb00000, bit 0), says so
 * and powers off, as an OS does when the pod is deleted. Like the echo
 * guest, its handler returns to the idle loop without iret (PVM). */
.include "lib.S"


.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $idle, %ebx             /* spurious interrupts just wake the idle loop */
    call interrupts_on_apics
    mov $GED_VECTOR, %eax
    mov $ged_interrupt, %ebx
    call set_gate
    mov $5, %eax                /* the GED is IOAPIC pin 5 */
    mov $GED_VECTOR, %ebx
    call route_irq
    mov $waiting, %esi
    call puts
idle:
    mov $stack_top, %esp
    sti
    hlt
    jmp idle

    POWER_BUTTON_HANDLER pressed

.section .rodata
waiting: .asciz "powerbutton guest: waiting for the power button\n"
pressed: .asciz "powerbutton guest: power button pressed, powering off\n"
