/* powerbutton: waits for the ACPI power button (vmpod's Generic Event
 * Device: IOAPIC pin 5, event register at 0xfeb00000, bit 0), says so
 * and powers off, as an OS does when the pod is deleted. Like the echo
 * guest, its handler returns to the idle loop without iret (PVM). */
.include "lib.S"

.set LAPIC, 0xfee00000
.set LAPIC_EOI, LAPIC + 0xb0
.set LAPIC_SPURIOUS, LAPIC + 0xf0
.set IOAPIC_SELECT, 0xfec00000
.set IOAPIC_WINDOW, 0xfec00010
.set GED_EVENTS, 0xfeb00000
.set GED_VECTOR, 0x25

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $0xff, %al              /* mask both 8259 PICs */
    out %al, $0x21
    out %al, $0xa1
    mov $ged_interrupt, %eax    /* IDT gate for the GED vector */
    mov $(idt + GED_VECTOR * 8), %edi
    mov %ax, (%edi)
    movw $0x08, 2(%edi)
    movw $0x8e00, 4(%edi)
    shr $16, %eax
    mov %ax, 6(%edi)
    lidt idt_pointer
    movl $0x1ff, LAPIC_SPURIOUS
    movl $0x1a, IOAPIC_SELECT   /* redirection entry 5, low: vector, edge, high */
    movl $GED_VECTOR, IOAPIC_WINDOW
    movl $0x1b, IOAPIC_SELECT   /* high: destination APIC 0 */
    movl $0, IOAPIC_WINDOW
    mov $waiting, %esi
    call puts
idle:
    mov $stack_top, %esp
    sti
    hlt
    jmp idle

ged_interrupt:
    movl $0, LAPIC_EOI
    mov GED_EVENTS, %eax        /* read-to-clear event bits */
    test $1, %eax
    jz idle
    mov $pressed, %esi
    call puts
    jmp acpi_poweroff

.section .data
idt_pointer:
.word 256 * 8 - 1
.long idt

.section .bss
.p2align 3
idt: .skip 256 * 8

.section .rodata
waiting: .asciz "powerbutton guest: waiting for the power button\n"
pressed: .asciz "powerbutton guest: power button pressed, powering off\n"
