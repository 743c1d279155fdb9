/* flood: after a key on the serial port, writes text to it with rep
 * outsb (4 KiB per instruction), then "flood done" and powers off:
 * 64 KiB after 's', 4 MiB after any other key. The serial throughput
 * benchmark uses the long flood; the test of a stdout nobody reads, the
 * short one. */
.include "lib.S"

.set CHUNKS, 1024
.set SHORT_CHUNKS, 16

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $ready, %esi
    call puts
    call getc
    mov $CHUNKS, %ebx
    cmp $'s', %al
    jne 2f
    mov $SHORT_CHUNKS, %ebx
2:  mov $COM1, %dx
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
