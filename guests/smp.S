/* smp: counts the enabled processors in the MADT, starts the others with
 * INIT and SIPI (a real-mode trampoline at 0x8000, as Linux does), and has
 * every vCPU report its APIC id. */
.include "lib.S"

.set LAPIC_ICR_LOW, LAPIC + 0x300
.set LAPIC_ICR_HIGH, LAPIC + 0x310
.set TRAMPOLINE, 0x8000
.set AP_LOCK, 0x8f00
.set AP_COUNT, 0x8f04
.set WAIT_LOOPS, 50000000

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    call count_cpus
    mov %eax, cpus
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov $cpu_word, %esi
    call puts
    mov %ebx, %eax
    call putdec
    mov $up_word, %esi
    call puts
    mov $ap_trampoline, %esi    /* copy the trampoline below 1 MiB */
    mov $TRAMPOLINE, %edi
    mov $(ap_trampoline_end - ap_trampoline), %ecx
    rep movsb
    movl $0, AP_LOCK
    movl $0, AP_COUNT
    movl $0x1ff, LAPIC_SPURIOUS
    movl $0, LAPIC_ICR_HIGH
    movl $0x000c4500, LAPIC_ICR_LOW   /* INIT, all excluding self */
    movl $(0x000c4600 | (TRAMPOLINE >> 12)), LAPIC_ICR_LOW   /* SIPI */
    mov cpus, %ecx
    dec %ecx
    mov $WAIT_LOOPS, %edx
1:  cmp %ecx, AP_COUNT
    je 2f
    pause
    dec %edx
    jnz 1b
    mov $timeout_message, %esi
    call puts
    mov AP_COUNT, %eax
    call putdec
    mov $newline, %esi
    call puts
    jmp hang
2:  mov $all_up, %esi
    call puts
    mov cpus, %eax
    call putdec
    mov $newline, %esi
    call puts
    jmp acpi_poweroff

/* count_cpus: enabled Processor Local APIC entries in the MADT, in %eax. */
count_cpus:
    push %ebx
    push %ecx
    push %esi
    mov $SIG_APIC, %eax
    call find_table
    mov %eax, %esi
    mov 4(%esi), %ebx
    add %esi, %ebx              /* end of table */
    add $44, %esi               /* first interrupt controller structure */
    xor %eax, %eax
1:  cmp %ebx, %esi
    jae 3f
    movzbl 1(%esi), %ecx        /* structure length */
    test %ecx, %ecx
    jz 3f
    cmpb $0, (%esi)             /* type 0: Processor Local APIC */
    jne 2f
    testl $1, 4(%esi)           /* enabled */
    jz 2f
    inc %eax
2:  add %ecx, %esi
    jmp 1b
3:  pop %esi
    pop %ecx
    pop %ebx
    ret

/* Runs on each AP in real mode at 0x8000 (CS = 0x800). Position
 * independent: only relative jumps and absolute data below 64 KiB. */
.code16
ap_trampoline:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx               /* %bl = APIC id */
1:  mov $1, %al
    xchg %al, AP_LOCK
    test %al, %al
    jz 2f
    pause
    jmp 1b
2:  mov $COM1, %dx
    mov $'c', %al
    out %al, %dx
    mov $'p', %al
    out %al, %dx
    mov $'u', %al
    out %al, %dx
    mov $' ', %al
    out %al, %dx
    movzbw %bl, %ax             /* APIC id in decimal, up to three digits */
    mov $10, %cl
    div %cl
    mov %ah, %ch                /* ones */
    xor %ah, %ah
    div %cl                     /* %al = hundreds, %ah = tens */
    mov %ah, %bh
    test %al, %al
    jz 3f
    add $'0', %al
    out %al, %dx
3:  test %bh, %bh
    jnz 4f
    test %al, %al
    jz 5f
4:  mov %bh, %al
    add $'0', %al
    out %al, %dx
5:  mov %ch, %al
    add $'0', %al
    out %al, %dx
    mov $' ', %al
    out %al, %dx
    mov $'u', %al
    out %al, %dx
    mov $'p', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    movb $0, AP_LOCK
    lock incl AP_COUNT
6:  cli
    hlt
    jmp 6b
ap_trampoline_end:
.code32

.section .bss
cpus: .skip 4

.section .rodata
cpu_word: .asciz "cpu "
up_word: .asciz " up\n"
all_up: .asciz "cpus up: "
timeout_message: .asciz "smp guest: timed out waiting for the other CPUs; arrived: "
newline: .asciz "\n"
