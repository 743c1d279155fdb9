/* bzimage: a file shaped like a Linux bzImage (boot protocol 2.15, one
 * setup sector, XLF_KERNEL_64). vmpod enters it at the 64-bit entry point
 * (load address + 0x200) with %rsi = boot_params; it prints the command
 * line and the e820 map it was given and powers off through the FADT. */

.set BP_ACPI_RSDP, 0x070
.set BP_E820_ENTRIES, 0x1e8
.set BP_CMD_LINE_PTR, 0x228
.set BP_E820_TABLE, 0x2d0
.set SETUP_SECTS, 1
.set PROTECTED_START, (SETUP_SECTS + 1) * 512

.section .image, "ax"
.code16
boot_sector:
.org 0x1f1
    .byte SETUP_SECTS
    .word 0                             /* root_flags */
    .long (image_end - protected_start + 15) / 16   /* syssize */
    .word 0, 0xffff, 0                  /* ram_size, vid_mode, root_dev */
    .word 0xaa55                        /* boot_flag */
    jmp setup_code                      /* 0x200: jump */
    .ascii "HdrS"                       /* 0x202: header */
    .word 0x020f                        /* version */
    .long 0                             /* realmode_swtch */
    .word 0, 0                          /* start_sys_seg, kernel_version */
    .byte 0                             /* type_of_loader */
    .byte 0x01                          /* loadflags: LOADED_HIGH */
    .word 0                             /* setup_move_size */
    .long 0x100000                      /* code32_start */
    .long 0, 0, 0                       /* ramdisk_image, ramdisk_size, bootsect_kludge */
    .word 0                             /* heap_end_ptr */
    .byte 0, 0                          /* ext_loader_ver, ext_loader_type */
    .long 0                             /* cmd_line_ptr */
    .long 0x37ffffff                    /* initrd_addr_max */
    .long 0x200000                      /* kernel_alignment */
    .byte 0, 0                          /* relocatable_kernel, min_alignment */
    .word 0x0001                        /* xloadflags: XLF_KERNEL_64 */
    .long 2047                          /* cmdline_size */
    .long 0                             /* hardware_subarch */
    .quad 0                             /* hardware_subarch_data */
    .long 0, 0                          /* payload_offset, payload_length */
    .quad 0                             /* setup_data */
    .quad 0x100000                      /* pref_address */
    .long image_end - protected_start   /* init_size */
setup_code:
    cli                                 /* real-mode entry: not used by vmpod */
    hlt

.org PROTECTED_START
protected_start:
.code32
    cli                                 /* 32-bit entry: not used by vmpod */
    hlt
.org PROTECTED_START + 0x200
.code64
entry64:
    mov %rsi, %r15                      /* boot_params */
    lea hello(%rip), %rsi
    call puts
    mov BP_CMD_LINE_PTR(%r15), %esi
    call puts
    lea e820_word(%rip), %rsi
    call puts
    movzbl BP_E820_ENTRIES(%r15), %eax
    call putdec
    lea ram_word(%rip), %rsi
    call puts
    call ram_bytes
    call putdec
    lea newline(%rip), %rsi
    call puts
    mov BP_ACPI_RSDP(%r15), %rsi        /* RSDP -> XSDT -> FADT */
    mov 24(%rsi), %rsi
    mov 4(%rsi), %ecx
    sub $36, %ecx
    shr $3, %ecx
    add $36, %rsi
1:  mov (%rsi), %rax
    cmpl $0x50434146, (%rax)            /* "FACP" */
    je 2f
    add $8, %rsi
    loop 1b
    jmp 3f
2:  mov 248(%rax), %edx                 /* sleep control register */
    mov $((5 << 2) | 0x20), %al         /* SLP_TYP 5, SLP_EN */
    out %al, %dx
3:  cli
    hlt
    jmp 3b

/* ram_bytes: sum of the e820 RAM entries, in MiB, in %eax. */
ram_bytes:
    movzbl BP_E820_ENTRIES(%r15), %ecx
    lea BP_E820_TABLE(%r15), %rsi
    xor %rax, %rax
1:  test %ecx, %ecx
    jz 2f
    cmpl $1, 16(%rsi)
    jne 3f
    add 8(%rsi), %rax
3:  add $20, %rsi
    dec %ecx
    jmp 1b
2:  shr $20, %rax
    ret

puts:
    push %rax
    push %rdx
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  pop %rdx
    pop %rax
    ret

putdec:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    mov $10, %ebx
    xor %ecx, %ecx
1:  xor %edx, %edx
    div %ebx
    push %rdx
    inc %ecx
    test %eax, %eax
    jnz 1b
    mov $0x3f8, %dx
2:  pop %rax
    add $'0', %al
    out %al, %dx
    loop 2b
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    ret

hello: .asciz "bzImage guest: 64-bit entry, command line: "
e820_word: .asciz "\nbzImage guest: e820 entries: "
ram_word: .asciz ", RAM MiB: "
newline: .asciz "\n"
.p2align 4
image_end:
