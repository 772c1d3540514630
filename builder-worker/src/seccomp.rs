//! The system-call filter Nix 2.8 puts on every sandboxed builder.
//!
//! Nix refuses, with `EPERM`, any `chmod` that would set the setuid or
//! setgid bit (a store path must never carry them), refuses extended
//! attributes and ACLs with `ENOTSUP` (the store does not keep them), and
//! sets `no_new_privs`. Both the x86-64 (with its x32 variant) and the
//! i386 system-call tables are covered, so a 32-bit builder on a 64-bit
//! host meets the same rules. Everything else is allowed.
//!
//! The filter is a classic BPF program built here once, before the
//! sandbox's child is cloned, and installed by the child just before it
//! executes the builder.

/// One BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low 32 bits of argument `i` (little-endian).
const fn arg(i: u32) -> u32 {
    16 + 8 * i
}

const SUID_SGID: u32 = 0o6000;

/// What a call is checked for.
#[derive(Clone, Copy)]
enum Rule {
    /// Refuse when argument `n` (a mode) has the setuid or setgid bit.
    ModeArg(u32),
    /// Refuse always with `ENOTSUP`.
    NoXattr,
}

/// (x86-64 number, i386 number, rule).
const CALLS: &[(u32, u32, Rule)] = &[
    (90, 15, Rule::ModeArg(1)),   // chmod
    (91, 94, Rule::ModeArg(1)),   // fchmod
    (268, 306, Rule::ModeArg(2)), // fchmodat
    (452, 452, Rule::ModeArg(2)), // fchmodat2
    (188, 226, Rule::NoXattr),    // setxattr
    (189, 227, Rule::NoXattr),    // lsetxattr
    (190, 228, Rule::NoXattr),    // fsetxattr
];

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Appends the checks of one architecture's table: compare the system-call
/// number (already in the accumulator) with each call and apply its rule.
fn table(p: &mut Vec<Insn>, pick: impl Fn(&(u32, u32, Rule)) -> u32) {
    // Per call: `jeq nr, 0, skip` then the rule's block, which returns.
    for call in CALLS {
        let block = match call.2 {
            Rule::ModeArg(n) => vec![
                stmt(BPF_LD_W_ABS, arg(n)),
                Insn {
                    code: BPF_JSET_K,
                    jt: 0,
                    jf: 1,
                    k: SUID_SGID,
                },
                stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
                stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
            ],
            Rule::NoXattr => vec![stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOTSUP as u32)],
        };
        p.push(Insn {
            code: BPF_JEQ_K,
            jt: 0,
            jf: block.len() as u8,
            k: pick(call),
        });
        p.extend(block);
    }
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
}

/// The filter program.
pub fn program() -> Vec<Insn> {
    let mut x64 = vec![
        stmt(BPF_LD_W_ABS, NR),
        // x32 system calls are x86-64 numbers with a high bit set.
        stmt(BPF_AND_K, !X32_SYSCALL_BIT),
    ];
    table(&mut x64, |c| c.0);
    let mut x86 = vec![stmt(BPF_LD_W_ABS, NR)];
    table(&mut x86, |c| c.1);

    let mut p = vec![
        stmt(BPF_LD_W_ABS, ARCH),
        // x86-64: fall through into its table; else skip past it.
        Insn {
            code: BPF_JEQ_K,
            jt: 0,
            jf: x64.len() as u8,
            k: AUDIT_ARCH_X86_64,
        },
    ];
    p.extend(x64);
    p.push(Insn {
        code: BPF_JEQ_K,
        jt: 0,
        jf: x86.len() as u8,
        k: AUDIT_ARCH_I386,
    });
    p.extend(x86);
    // Any other architecture: nothing to refuse.
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p
}

/// Installs `prog` on the calling thread after setting `no_new_privs`.
/// Only raw system calls: safe in the sandbox's child.
///
/// # Safety
/// `prog` must be a valid program from [`program`].
pub unsafe fn install(prog: &[Insn]) -> libc::c_int {
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1 {
        return -1;
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    libc::prctl(
        libc::PR_SET_SECCOMP,
        libc::SECCOMP_MODE_FILTER,
        &fprog as *const libc::sock_fprog,
        0,
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions the program uses, to check
    /// its jumps without installing it.
    fn run(prog: &[Insn], arch: u32, nr: u32, args: [u32; 6]) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    acc = match i.k {
                        NR => nr,
                        ARCH => arch,
                        k => args[((k - 16) / 8) as usize],
                    }
                }
                BPF_AND_K => acc &= i.k,
                BPF_RET_K => return i.k,
                BPF_JEQ_K | BPF_JSET_K => {
                    let hit = if i.code == BPF_JEQ_K {
                        acc == i.k
                    } else {
                        acc & i.k != 0
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                c => panic!("unexpected instruction {c:#x}"),
            }
            pc += 1;
        }
    }

    const EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOTSUP: u32 = SECCOMP_RET_ERRNO | libc::ENOTSUP as u32;

    #[test]
    fn refuses_setuid_setgid_and_xattrs_like_nix() {
        let p = program();
        let x64 = AUDIT_ARCH_X86_64;
        let x86 = AUDIT_ARCH_I386;
        let allow = SECCOMP_RET_ALLOW;
        // chmod(path, mode)
        assert_eq!(run(&p, x64, 90, [0, 0o4755, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, x64, 90, [0, 0o2755, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, x64, 90, [0, 0o1777, 0, 0, 0, 0]), allow);
        assert_eq!(run(&p, x64, 90, [0, 0o755, 0, 0, 0, 0]), allow);
        // fchmodat(dirfd, path, mode): the mode is the third argument.
        assert_eq!(run(&p, x64, 268, [0, 0o4755, 0o644, 0, 0, 0]), allow);
        assert_eq!(run(&p, x64, 268, [0, 0, 0o4644, 0, 0, 0]), EPERM);
        // x32 numbering.
        assert_eq!(
            run(&p, x64, X32_SYSCALL_BIT | 91, [0, 0o6000, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(run(&p, x64, 188, [0; 6]), ENOTSUP);
        assert_eq!(run(&p, x64, 190, [0; 6]), ENOTSUP);
        // i386 table.
        assert_eq!(run(&p, x86, 15, [0, 0o4755, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, x86, 306, [0, 0, 0o2000, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, x86, 227, [0; 6]), ENOTSUP);
        // Unrelated calls, and the same numbers in the other table.
        assert_eq!(run(&p, x64, 0, [0; 6]), allow);
        assert_eq!(run(&p, x64, 15, [0, 0o4755, 0, 0, 0, 0]), allow);
        assert_eq!(run(&p, x86, 90, [0, 0o4755, 0, 0, 0, 0]), allow);
        assert_eq!(run(&p, 0xdead, 90, [0, 0o4755, 0, 0, 0, 0]), allow);
    }
}
