/* echo: interrupt-driven serial echo (IOAPIC pin 4 -> vector 0x24), so an
 * idle guest halts instead of polling. Ctrl-D powers off. The demo guest.
 *
 * The handler never returns with iret: on PVM hosts this code runs through
 * KVM's instruction emulator, which cannot emulate a protected-mode iret.
 * The interrupt only wakes the idle loop, so the handler drops its frame
 * and jumps back to it instead. */
.include "lib.S"

.set SERIAL_VECTOR, 0x24

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $idle, %ebx             /* spurious interrupts just wake the idle loop */
    call interrupts_on_apics
    mov $SERIAL_VECTOR, %eax
    mov $serial_interrupt, %ebx
    call set_gate
    mov $4, %eax                /* COM1 is IOAPIC pin 4 */
    mov $SERIAL_VECTOR, %ebx
    call route_irq
.ifdef POWER_BUTTON
    mov $GED_VECTOR, %eax       /* the GED (power button) is IOAPIC pin 5 */
    mov $ged_interrupt, %ebx
    call set_gate
    mov $5, %eax
    mov $GED_VECTOR, %ebx
    call route_irq
.endif
    mov $0x3f9, %dx             /* IER: received-data interrupt */
    mov $1, %al
    out %al, %dx
    mov $0x3fc, %dx             /* MCR: OUT2 gates the interrupt */
    mov $0x08, %al
    out %al, %dx
    mov $banner, %esi
    call puts
idle:
    mov $stack_top, %esp
    mov $COM1_LSR, %dx          /* input that came before we slept */
    in %dx, %al
    test $1, %al
    jnz serial_interrupt
    sti
    hlt
    jmp idle

serial_interrupt:
1:  mov $COM1_LSR, %dx
    in %dx, %al
    test $1, %al
    jz 2f
    mov $COM1, %dx
    in %dx, %al
    cmp $0x04, %al              /* Ctrl-D */
    je 3f
    cmp $'\r', %al
    jne 4f
    call putc
    mov $'\n', %al
4:  call putc
    jmp 1b
2:  movl $0, LAPIC_EOI
    jmp idle
3:  mov $goodbye, %esi
    call puts
    jmp acpi_poweroff

.ifdef POWER_BUTTON
    POWER_BUTTON_HANDLER pressed
.endif

.section .rodata
banner: .asciz "vmpod echo guest: type and it echoes, Ctrl-D powers off\n"
goodbye: .asciz "\necho guest: powering off\n"
.ifdef POWER_BUTTON
pressed: .asciz "\necho guest: power button pressed, powering off\n"
.endif
