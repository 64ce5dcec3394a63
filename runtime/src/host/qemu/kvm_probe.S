# kvm_probe.S - the boot sector kiln boots under `-accel kvm` to find out whether KVM
# really runs guests on this host (see accel.rs). It walks the path every OS takes:
# real mode -> protected mode -> long mode with paging, then spins 20M iterations in
# 64-bit mode and leaves through isa-debug-exit (qemu exit code 33). Real KVM does
# this in milliseconds; TCG in ~0.2 s; a host that only emulates guest code (nested
# kvm_pvm) does not finish in 20 s. Serial gets "R", "P", "L" as it goes.
#
# Rebuild kvm_probe.bin (512 bytes, checked in):
#   as --64 -o p.o kvm_probe.S && ld -Ttext=0x7c00 --oformat binary -o kvm_probe.bin p.o
.code16
.globl _start
_start:
  cli
  xor %ax,%ax
  mov %ax,%ds
  mov %ax,%ss
  mov $0x7c00,%sp
  mov $0x3f8,%dx
  mov $'R',%al
  out %al,%dx
  in $0x92,%al
  or $2,%al
  out %al,$0x92
  lgdtl gdtr
  mov %cr0,%eax
  or $1,%eax
  mov %eax,%cr0
  ljmp $0x08,$pm
.code32
pm:
  mov $0x10,%ax
  mov %ax,%ds
  mov %ax,%es
  mov %ax,%ss
  mov $0x3f8,%dx
  mov $'P',%al
  out %al,%dx
  mov $0x1000,%edi
  xor %eax,%eax
  mov $0xc00,%ecx
  rep stosl
  movl $0x2003,0x1000
  movl $0x3003,0x2000
  movl $0x83,0x3000
  mov %cr4,%eax
  or $0x20,%eax
  mov %eax,%cr4
  mov $0x1000,%eax
  mov %eax,%cr3
  mov $0xc0000080,%ecx
  rdmsr
  or $0x100,%eax
  wrmsr
  mov %cr0,%eax
  or $0x80000000,%eax
  mov %eax,%cr0
  ljmp $0x18,$lm
.code64
lm:
  mov $0x3f8,%dx
  mov $'L',%al
  out %al,%dx
  mov $20000000,%ecx
8: dec %ecx
  jnz 8b
  mov $0xf4,%dx
  mov $0x10,%al
  out %al,%dx
1: hlt
  jmp 1b
.align 8
gdt:
  .quad 0
  .quad 0x00cf9a000000ffff
  .quad 0x00cf92000000ffff
  .quad 0x00af9a000000ffff
gdtr:
  .word gdtr - gdt - 1
  .long gdt
.org 510
  .word 0xaa55
