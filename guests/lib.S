/* Shared helpers for the 32-bit tiny guests (PVH entry: flat protected
 * mode, paging off, %ebx = hvm_start_info). Included by each guest.
 *
 * Calling convention: arguments in %eax / %esi, every helper preserves
 * all other registers. */

.set COM1, 0x3f8
.set COM1_LSR, 0x3fd
.set START_INFO_RSDP, 32      /* hvm_start_info.rsdp_paddr */
.set RSDP_XSDT, 24            /* RSDP (revision 2) .xsdt_address */
.set FADT_RESET_REG_ADDR, 120 /* reset_reg.address (GAS at 116) */
.set FADT_RESET_VALUE, 128
.set FADT_X_DSDT, 140
.set FADT_SLEEP_CONTROL_ADDR, 248 /* sleep_control_reg.address (GAS at 244) */
.set SIG_FACP, 0x50434146     /* "FACP" read as a little-endian dword */
.set LAPIC, 0xfee00000
.set LAPIC_EOI, LAPIC + 0xb0
.set LAPIC_SPURIOUS, LAPIC + 0xf0
.set IOAPIC_SELECT, 0xfec00000
.set IOAPIC_WINDOW, 0xfec00010
.set SPURIOUS_VECTOR, 0xff
.set SIG_APIC, 0x43495041     /* "APIC" */

/* The PVH note: XEN_ELFNOTE_PHYS32_ENTRY (18), owner "Xen". */
.section .note.pvh, "a"
.p2align 2
.long 4, 4, 18
.asciz "Xen"
.p2align 2
.long _start

.section .bss
.p2align 4
stack_bottom:
.skip 16384
stack_top:
start_info:
.skip 4

.section .bss
.p2align 3
idt: .skip 256 * 8

.section .data
idt_pointer:
.word 256 * 8 - 1
.long idt
.p2align 3
gdt:
.quad 0                          /* null */
.quad 0x00cf9a000000ffff         /* 0x08: flat 32-bit code */
.quad 0x00cf92000000ffff         /* 0x10: flat data */
gdt_end:
gdt_pointer:
.word gdt_end - gdt - 1
.long gdt

.section .text
.code32

/* Common entry work: own GDT and stack, remember start_info. */
/* POWER_BUTTON_HANDLER MESSAGE: defines ged_interrupt, which on the ACPI
 * power button (vmpod's Generic Event Device: event register at
 * 0xfeb00000, bit 0) prints MESSAGE and powers off, else returns to the
 * guest's idle loop. Route IOAPIC pin 5 to it. */
.set GED_EVENTS, 0xfeb00000
.set GED_VECTOR, 0x25
.macro POWER_BUTTON_HANDLER message
ged_interrupt:
    movl $0, LAPIC_EOI
    mov GED_EVENTS, %eax        /* read-to-clear event bits */
    test $1, %eax
    jz idle
    mov $\message, %esi
    call puts
    jmp acpi_poweroff
.endm

.macro GUEST_ENTRY
    cli
    lgdt gdt_pointer
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $stack_top, %esp
    mov %ebx, start_info
.endm

/* putc: write %al to COM1. */
putc:
    push %edx
    mov $COM1, %dx
    out %al, %dx
    pop %edx
    ret

/* puts: write the NUL-terminated string at %esi. */
puts:
    push %eax
    push %esi
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  pop %esi
    pop %eax
    ret

/* putdec: write %eax in decimal. */
putdec:
    pusha
    mov $10, %ebx
    xor %ecx, %ecx
1:  xor %edx, %edx
    div %ebx
    push %edx
    inc %ecx
    test %eax, %eax
    jnz 1b
2:  pop %eax
    add $'0', %al
    call putc
    loop 2b
    popa
    ret

/* puthex: write %eax as 0x followed by 8 hex digits. */
puthex:
    pusha
    mov %eax, %edx
    mov $'0', %al
    call putc
    mov $'x', %al
    call putc
    mov $8, %ecx
1:  rol $4, %edx
    mov %dl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $('a' - '9' - 1), %al
2:  call putc
    loop 1b
    popa
    ret

/* getc: wait for a byte on COM1 (polling) and return it in %al. */
getc:
    push %edx
    mov $COM1_LSR, %dx
1:  in %dx, %al
    test $1, %al
    jz 1b
    mov $COM1, %dx
    in %dx, %al
    pop %edx
    ret

/* find_table: %eax = signature; returns the table's address in %eax, or 0.
 * Walks start_info → RSDP → XSDT as an OS would. */
find_table:
    push %ecx
    push %edx
    push %esi
    mov %eax, %edx
    mov start_info, %esi
    mov START_INFO_RSDP(%esi), %esi
    mov RSDP_XSDT(%esi), %esi
    mov 4(%esi), %ecx           /* XSDT length */
    sub $36, %ecx
    shr $3, %ecx                /* number of 64-bit entries */
    add $36, %esi
1:  test %ecx, %ecx
    jz 3f
    mov (%esi), %eax
    cmp %edx, (%eax)
    je 2f
    add $8, %esi
    dec %ecx
    jmp 1b
3:  xor %eax, %eax
2:  pop %esi
    pop %edx
    pop %ecx
    ret

/* s5_sleep_type: SLP_TYP of \_S5_ from the DSDT, in %eax (5 if absent). */
s5_sleep_type:
    push %ecx
    push %esi
    mov $SIG_FACP, %eax
    call find_table
    mov FADT_X_DSDT(%eax), %esi
    mov 4(%esi), %ecx           /* DSDT length */
1:  cmpl $0x5f35535f, (%esi)    /* "_S5_" */
    je 2f
    inc %esi
    loop 1b
    mov $5, %eax
    jmp 4f
2:  /* "_S5_" PackageOp PkgLength NumElements, then the first element */
    movzbl 7(%esi), %eax
    cmp $0x0a, %al              /* BytePrefix */
    jne 3f
    movzbl 8(%esi), %eax
    jmp 4f
3:  cmp $0x01, %al              /* ZeroOp is 0, OneOp is 1 */
    jbe 4f
    mov $5, %eax
4:  pop %esi
    pop %ecx
    ret

/* acpi_poweroff: SLP_TYP(\_S5_) | SLP_EN into the FADT's sleep control
 * register, as a hardware-reduced ACPI OS does. Does not return. */
acpi_poweroff:
    call s5_sleep_type
    shl $2, %eax
    or $0x20, %eax              /* SLP_EN */
    mov %eax, %ecx
    mov $SIG_FACP, %eax
    call find_table
    mov FADT_SLEEP_CONTROL_ADDR(%eax), %edx
    mov %cl, %al
    out %al, %dx
    jmp hang

/* acpi_reset: the FADT's reset value into its reset register. */
acpi_reset:
    mov $SIG_FACP, %eax
    call find_table
    mov FADT_RESET_REG_ADDR(%eax), %edx
    mov FADT_RESET_VALUE(%eax), %al
    out %al, %dx
    jmp hang

/* set_gate: IDT entry %eax -> handler %ebx (32-bit interrupt gate). */
set_gate:
    push %ebx
    push %edi
    lea idt(,%eax,8), %edi
    mov %bx, (%edi)
    movw $0x08, 2(%edi)
    movw $0x8e00, 4(%edi)
    shr $16, %ebx
    mov %bx, 6(%edi)
    pop %edi
    pop %ebx
    ret

/* interrupts_on_apics: mask both 8259 PICs, load the IDT with %ebx as
 * the spurious-interrupt handler, enable the local APIC. Interrupts stay
 * off (cli) until the guest says sti. */
interrupts_on_apics:
    push %eax
    push %ebx
    mov $0xff, %al
    out %al, $0x21
    out %al, $0xa1
    mov $SPURIOUS_VECTOR, %eax
    call set_gate
    lidt idt_pointer
    movl $(0x100 | SPURIOUS_VECTOR), LAPIC_SPURIOUS
    pop %ebx
    pop %eax
    ret

/* route_irq: IOAPIC pin %eax -> vector %ebx on APIC 0, edge, active high. */
route_irq:
    push %eax
    shl $1, %eax
    add $0x10, %eax             /* redirection entry, low half */
    mov %eax, IOAPIC_SELECT
    mov %ebx, IOAPIC_WINDOW
    inc %eax                    /* high half: destination APIC 0 */
    mov %eax, IOAPIC_SELECT
    movl $0, IOAPIC_WINDOW
    pop %eax
    ret

/* report_scancodes: prints every scancode the i8042 delivers (polling
 * its status port), one per line ("scancode 0x0000001e"), and powers off
 * when Esc is released (0x81). Does not return. */
report_scancodes:
1:  in $0x64, %al               /* status: output buffer full? */
    test $1, %al
    jz 1b
    in $0x60, %al
    movzbl %al, %eax
    mov %eax, %ebx
    mov $scancode_label, %esi
    call puts
    call puthex
    mov $scancode_newline, %esi
    call puts
    cmp $0x81, %ebx
    jne 1b
    jmp acpi_poweroff

.section .rodata
scancode_label: .asciz "scancode "
scancode_newline: .asciz "\n"
.section .text

/* hang: stop this CPU for good. */
hang:
    cli
1:  hlt
    jmp 1b
