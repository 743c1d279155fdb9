/* flood: after any key on the serial port, writes 4 MiB of text to it
 * with rep outsb (4 KiB per instruction), then "flood done" and powers
 * off. Used by the serial throughput benchmark. */
.include "lib.S"

.set CHUNKS, 1024

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $ready, %esi
    call puts
    call getc
    mov $CHUNKS, %ebx
    mov $COM1, %dx
1:  mov $pattern, %esi
    mov $(pattern_end - pattern), %ecx
    rep outsb
    dec %ebx
    jnz 1b
    mov $done, %esi
    call puts
    jmp acpi_poweroff

.section .rodata
ready: .asciz "flood guest ready\n"
done: .asciz "flood done\n"
pattern:
.rept 64
.ascii "the quick brown fox jumps over the lazy dog, 0123456789 ABCDEF!\n"
.endr
pattern_end:
