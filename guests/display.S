/* display: draws a known pattern on vmpod's framebuffer (1024x768, 32-bit
 * XRGB at 0xc0000000, the default display) and then prints every scancode
 * the i8042 delivers, one per line, powering off when Esc is released.
 * Under QEMU with its standard VGA (PCI 00:02.0, 1234:1111) it sets that
 * card to 1024x768x32 through the Bochs DISPI ports and draws on its
 * framebuffer instead, so benchmarks can show QEMU's VNC the same screen.
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
    call find_framebuffer       /* -> %edi */
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
    jmp report_scancodes

/* %edi = where to draw: QEMU's standard VGA if there is one, else vmpod's
 * framebuffer. */
.set PCI_ADDRESS, 0xcf8
.set PCI_DATA, 0xcfc
.set VGA_SLOT, 0x80001000       /* bus 0, device 2, function 0 */
.set DISPI_INDEX, 0x1ce
.set DISPI_DATA, 0x1cf
find_framebuffer:
    mov $FRAMEBUFFER, %edi
    mov $VGA_SLOT, %eax
    mov $PCI_ADDRESS, %dx
    out %eax, %dx
    mov $PCI_DATA, %dx
    in %dx, %eax
    cmp $0x11111234, %eax       /* device 1111, vendor 1234 */
    jne 1f
    mov $(VGA_SLOT + 0x10), %eax /* BAR 0: the linear framebuffer */
    mov $PCI_ADDRESS, %dx
    out %eax, %dx
    mov $PCI_DATA, %dx
    in %dx, %eax
    and $0xfffffff0, %eax
    mov %eax, %edi
    mov $(VGA_SLOT + 0x04), %eax /* command: memory decoding on */
    mov $PCI_ADDRESS, %dx
    out %eax, %dx
    mov $PCI_DATA, %dx
    in %dx, %eax
    or $2, %eax
    out %eax, %dx
    mov $4, %ax; call dispi_zero /* disable while the mode changes */
    mov $1, %ax; mov $WIDTH, %cx; call dispi
    mov $2, %ax; mov $HEIGHT, %cx; call dispi
    mov $3, %ax; mov $32, %cx; call dispi
    mov $4, %ax; mov $0x41, %cx; call dispi /* enabled, linear framebuffer */
1:  ret
dispi_zero:
    xor %cx, %cx
dispi:                          /* register %ax = %cx */
    mov $DISPI_INDEX, %dx
    out %ax, %dx
    mov $DISPI_DATA, %dx
    mov %cx, %ax
    out %ax, %dx
    ret

.section .rodata
drawn: .asciz "display guest: drew the pattern\n"
