/* keyboard: prints every scancode the i8042 delivers (polling its status
 * port), one per line, and powers off when Esc is released (0x81). */
.include "lib.S"

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $ready, %esi
    call puts
1:  in $0x64, %al               /* status: output buffer full? */
    test $1, %al
    jz 1b
    in $0x60, %al
    movzbl %al, %eax
    mov %eax, %ebx
    mov $scancode, %esi
    call puts
    call puthex
    mov $newline, %esi
    call puts
    cmp $0x81, %ebx
    jne 1b
    jmp acpi_poweroff

.section .rodata
ready: .asciz "keyboard guest ready\n"
scancode: .asciz "scancode "
newline: .asciz "\n"
