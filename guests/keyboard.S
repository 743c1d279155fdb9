/* keyboard: prints every scancode the i8042 delivers (polling its status
 * port), one per line, and powers off when Esc is released (0x81). */
.include "lib.S"

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $ready, %esi
    call puts
    jmp report_scancodes

.section .rodata
ready: .asciz "keyboard guest ready\n"
