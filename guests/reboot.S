/* reboot: waits for a key and resets the VM the way it names:
 * r = ACPI reset register, k = i8042 reset line, t = triple fault,
 * p = power off. Memory is cleared by a reset, so every boot says "ready". */
.include "lib.S"

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $banner, %esi
    call puts
1:  call getc
    cmp $'r', %al
    je acpi_reset
    cmp $'k', %al
    je keyboard_reset
    cmp $'t', %al
    je triple_fault
    cmp $'p', %al
    je acpi_poweroff
    jmp 1b

keyboard_reset:
    mov $0xfe, %al
    out %al, $0x64
    jmp hang

triple_fault:
    lidt empty_idt              /* no IDT: the #UD cannot be delivered */
    ud2
    jmp hang

.section .data
empty_idt:
.word 0
.long 0

.section .rodata
banner: .asciz "reboot guest ready: r=ACPI reset register, k=i8042 reset, t=triple fault, p=power off\n"
