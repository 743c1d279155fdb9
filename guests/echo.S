/* echo: interrupt-driven serial echo (IOAPIC pin 4 -> vector 0x24), so an
 * idle guest halts instead of polling. Ctrl-D powers off. The demo guest.
 *
 * The handler never returns with iret: on PVM hosts this code runs through
 * KVM's instruction emulator, which cannot emulate a protected-mode iret.
 * The interrupt only wakes the idle loop, so the handler drops its frame
 * and jumps back to it instead. */
.include "lib.S"

.set LAPIC, 0xfee00000
.set LAPIC_EOI, LAPIC + 0xb0
.set LAPIC_SPURIOUS, LAPIC + 0xf0
.set IOAPIC_SELECT, 0xfec00000
.set IOAPIC_WINDOW, 0xfec00010
.set SERIAL_VECTOR, 0x24
.set SPURIOUS_VECTOR, 0xff

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $0xff, %al              /* mask both 8259 PICs */
    out %al, $0x21
    out %al, $0xa1
    mov $SERIAL_VECTOR, %eax
    mov $serial_interrupt, %ebx
    call set_gate
    mov $SPURIOUS_VECTOR, %eax
    mov $ignore_interrupt, %ebx
    call set_gate
    lidt idt_pointer
    movl $(0x100 | SPURIOUS_VECTOR), LAPIC_SPURIOUS
    movl $0x18, IOAPIC_SELECT   /* redirection entry 4, low: vector, edge, high */
    movl $SERIAL_VECTOR, IOAPIC_WINDOW
    movl $0x19, IOAPIC_SELECT   /* high: destination APIC 0 */
    movl $0, IOAPIC_WINDOW
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

/* set_gate: IDT entry %eax -> handler %ebx (32-bit interrupt gate). */
set_gate:
    lea idt(,%eax,8), %edi
    mov %bx, (%edi)
    movw $0x08, 2(%edi)
    movw $0x8e00, 4(%edi)
    shr $16, %ebx
    mov %bx, 6(%edi)
    ret

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
ignore_interrupt:
    jmp idle
3:  mov $goodbye, %esi
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
banner: .asciz "vmpod echo guest: type and it echoes, Ctrl-D powers off\n"
goodbye: .asciz "\necho guest: powering off\n"
