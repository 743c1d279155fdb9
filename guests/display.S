/* display: draws a known pattern on vmpod's framebuffer (1024x768, 32-bit
 * XRGB at 0xc0000000, the default display) and then prints every scancode
 * the i8042 delivers, one per line, powering off when Esc is released.
 *
 * The pattern, which tests compare pixel by pixel:
 *   rows   0..191  red 0xff0000       rows 192..383  green 0x00ff00
 *   rows 384..575  blue 0x0000ff      rows 576..767  64x64 squares,
 *   white 0xffffff where (x/64 + y/64) is odd, else black */
.include "lib.S"

.set FRAMEBUFFER, 0xc0000000
.set WIDTH, 1024
.set HEIGHT, 768
.set BAND, 192

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    cld
    mov $FRAMEBUFFER, %edi
    mov $0xff0000, %eax
    mov $(WIDTH * BAND), %ecx
    rep stosl
    mov $0x00ff00, %eax
    mov $(WIDTH * BAND), %ecx
    rep stosl
    mov $0x0000ff, %eax
    mov $(WIDTH * BAND), %ecx
    rep stosl
    mov $(3 * BAND), %edx       /* y */
1:  xor %ebx, %ebx              /* which square across */
2:  mov %edx, %eax
    shr $6, %eax
    add %ebx, %eax
    and $1, %eax
    neg %eax
    and $0xffffff, %eax         /* white on odd squares, else black */
    mov $64, %ecx
    rep stosl
    inc %ebx
    cmp $(WIDTH / 64), %ebx
    jne 2b
    inc %edx
    cmp $HEIGHT, %edx
    jne 1b
    mov $drawn, %esi
    call puts
3:  in $0x64, %al               /* status: output buffer full? */
    test $1, %al
    jz 3b
    in $0x60, %al
    movzbl %al, %eax
    mov %eax, %ebx
    mov $scancode, %esi
    call puts
    call puthex
    mov $newline, %esi
    call puts
    cmp $0x81, %ebx
    jne 3b
    jmp acpi_poweroff

.section .rodata
drawn: .asciz "display guest: drew the pattern\n"
scancode: .asciz "scancode "
newline: .asciz "\n"
