/* hostile: touches what is not there (unmapped MMIO, memory beyond RAM,
 * unknown ports, PCI configuration space, bogus CPUID leaves), reports
 * what it read, and says it is still alive. */
.include "lib.S"

.section .text.entry
.global _start
_start:
    GUEST_ENTRY
    mov $intro, %esi
    call puts
    mov $mmio_read, %esi        /* the virtio window, with nothing in it */
    call puts
    mov 0xd0000000, %eax
    call puthex
    movl $0x12345678, 0xdfff0000
    mov $beyond_ram, %esi       /* 256 MiB: past RAM, outside the hole */
    call puts
    mov 0x10000000, %eax
    call puthex
    mov $port_read, %esi
    call puts
    mov $0x1234, %dx
    in %dx, %eax
    call puthex
    mov $0x5a, %al
    out %al, %dx
    mov $pci_read, %esi         /* vmpod has no PCI */
    call puts
    mov $0xcf8, %dx
    mov $0x80000000, %eax
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    call puthex
    mov $cpuid_read, %esi
    call puts
    mov $0x8fffffff, %eax
    xor %ecx, %ecx
    cpuid
    call puthex
    mov $0x4fffffff, %eax
    mov $0x77, %ecx
    cpuid
    mov $alive, %esi
    call puts
    jmp acpi_poweroff

.section .rodata
intro: .asciz "hostile guest: poking at things that are not there\n"
mmio_read: .asciz "unmapped MMIO read: "
beyond_ram: .asciz "\nread beyond RAM: "
port_read: .asciz "\nunknown port read: "
pci_read: .asciz "\nPCI config read: "
cpuid_read: .asciz "\nbogus CPUID leaf: "
alive: .asciz "\nhostile guest: still alive\n"
