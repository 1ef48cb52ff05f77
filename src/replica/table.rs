//! The syscall table for x86_64: every system call number the kernel knows,
//! each with a class and a one-line reason.
//!
//! Invariants:
//! - the table is exhaustive for numbers `0..=334` and `424..=469`; any other
//!   number (and any x32 or i386 call) is unclassified and fails closed;
//! - entries are sorted by number and unique (checked by tests);
//! - the seccomp filter is generated from this table only ([`super::filter`]),
//!   so a call's interception and its documented class cannot disagree.

/// How a system call is treated. In the words: `Execute` and `Intercept`
/// are *execute*, `Record` is *record*, `Verify` is *execute + verify*, `ByFd`
/// is one of those three chosen by the kind of the descriptor, `Enosys` and
/// `Refuse` are *refuse*.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Runs natively on both nodes, never seen by the supervisor: its result is
    /// a pure function of the replica's own state once threads are serialized.
    Execute,
    /// Runs on both nodes, but the supervisor sees it first: it may block (a
    /// waiting thread must not hold the token), hands the token over, or
    /// changes bookkeeping (fds the supervisor classified).
    Intercept,
    /// Nondeterministic input: the primary performs it, the backup takes the
    /// result from the log.
    Record,
    /// Runs on both nodes; the bytes it moves are digested and compared.
    Verify,
    /// Depends on the descriptor: a socket, pipe or device that crosses the
    /// tree's boundary is *record*, a regular file is *verify*, an object
    /// created inside the tree is *execute*.
    ByFd,
    /// Answered `ENOSYS` by the filter (with a warning naming it): the feature
    /// would bypass interception and callers are known to fall back.
    Enosys,
    /// Stops the run with a message naming the call and the process.
    Refuse,
}

/// One table entry.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub nr: u32,
    pub name: &'static str,
    pub class: Class,
    pub why: &'static str,
}

use Class::*;

macro_rules! table {
    ($( $nr:literal $name:ident $class:ident $why:literal ;)*) => {
        /// The table, sorted by number.
        pub static TABLE: &[Entry] = &[
            $( Entry { nr: $nr, name: stringify!($name), class: $class, why: $why }, )*
        ];
    };
}

table! {
    0 read ByFd "socket and pipe input crossing the tree is recorded; file reads are verified";
    1 write ByFd "output to a client is performed once and digested; file writes run on both and are digested";
    2 open Execute "identical files on both nodes; later reads are classified by descriptor";
    3 close Intercept "the supervisor forgets what it knew about the descriptor first";
    4 stat Record "inode, device and times differ between hosts";
    5 fstat Record "inode, device and times differ between hosts";
    6 lstat Record "inode, device and times differ between hosts";
    7 poll Record "readiness is an input";
    8 lseek Execute "file offsets are the replica's own state";
    9 mmap Execute "addresses are deterministic: ASLR off, one thread at a time";
    10 mprotect Execute "the replica's own memory";
    11 munmap Execute "the replica's own memory";
    12 brk Execute "the replica's own memory";
    13 rt_sigaction Execute "the replica's own signal dispositions";
    14 rt_sigprocmask Execute "the replica's own signal mask; delivery is controlled at ptrace stops";
    15 rt_sigreturn Execute "returns from a handler the supervisor delivered";
    16 ioctl ByFd "terminal and socket queries on boundary descriptors are recorded";
    17 pread64 ByFd "file reads are verified; boundary reads recorded";
    18 pwrite64 ByFd "file writes run on both and are digested";
    19 readv ByFd "as read: boundary input recorded, file reads verified";
    20 writev ByFd "as write: client output performed once and digested";
    21 access Execute "identical files on both nodes";
    22 pipe Execute "creates a pipe inside the tree";
    23 select Record "readiness is an input";
    24 sched_yield Intercept "a hand-over point: the token passes to the next ready thread";
    25 mremap Execute "the replica's own memory";
    26 msync Execute "the replica's own memory";
    27 mincore Refuse "page residency is host state; not supported";
    28 madvise Execute "the replica's own memory";
    29 shmget Execute "System V IPC lives in the replica's own IPC namespace";
    30 shmat Execute "System V IPC lives in the replica's own IPC namespace";
    31 shmctl Execute "System V IPC lives in the replica's own IPC namespace";
    32 dup Execute "the replica's own descriptor table";
    33 dup2 Intercept "replaces a descriptor the supervisor may have classified";
    34 pause Intercept "waits for a signal, which only the supervisor delivers";
    35 nanosleep Record "sleeps take real time on the primary; replay follows the log";
    36 getitimer Record "interval timers are emulated by the supervisor";
    37 alarm Record "interval timers are emulated by the supervisor";
    38 setitimer Record "interval timers are emulated by the supervisor";
    39 getpid Execute "pids are identical: fresh PID namespace, serialized clones";
    40 sendfile ByFd "output to a client is performed once and digested";
    41 socket Execute "creates a socket; its I/O is classified by descriptor";
    42 connect ByFd "unix sockets inside the tree run natively; outbound network connections are refused";
    43 accept Record "a new client connection is an input";
    44 sendto ByFd "as write: client output performed once and digested";
    45 recvfrom ByFd "as read: boundary input recorded, file reads verified";
    46 sendmsg ByFd "as write: client output performed once and digested";
    47 recvmsg ByFd "as read: boundary input recorded, file reads verified";
    48 shutdown ByFd "a boundary connection's shutdown is performed once; its FIN is output";
    49 bind ByFd "binding the service address is performed once; the backup binds at promote";
    50 listen ByFd "listening on the service address is performed once; the backup listens at promote";
    51 getsockname ByFd "boundary socket addresses are host facts";
    52 getpeername ByFd "boundary socket addresses are host facts";
    53 socketpair Execute "creates sockets inside the tree";
    54 setsockopt ByFd "options on boundary sockets are applied once and re-applied at promote";
    55 getsockopt ByFd "boundary socket state (SO_ERROR, TCP_INFO) is an input";
    56 clone Execute "followed through ptrace clone events; serialized, so pids are identical";
    57 fork Execute "followed through ptrace fork events";
    58 vfork Execute "followed through ptrace vfork events";
    59 execve Execute "followed through the ptrace exec event: auxv rewritten, binary digested";
    60 exit Execute "a thread exit is seen through ptrace";
    61 wait4 Intercept "blocks until a child exits; emulated so a waiting thread never holds the token";
    62 kill Intercept "runs natively; the target is then checked for a signal that must interrupt a blocked call";
    63 uname Record "host name and kernel release differ between hosts";
    64 semget Execute "System V IPC lives in the replica's own IPC namespace";
    65 semop Refuse "can block inside the kernel while holding the token; not supported";
    66 semctl Execute "System V IPC lives in the replica's own IPC namespace";
    67 shmdt Execute "System V IPC lives in the replica's own IPC namespace";
    68 msgget Execute "System V IPC lives in the replica's own IPC namespace";
    69 msgsnd Refuse "can block inside the kernel while holding the token; not supported";
    70 msgrcv Refuse "can block inside the kernel while holding the token; not supported";
    71 msgctl Execute "System V IPC lives in the replica's own IPC namespace";
    72 fcntl Intercept "F_SETLKW can block; the supervisor checks the command";
    73 flock Intercept "a blocking lock must not hold the token";
    74 fsync Execute "files are written on both nodes";
    75 fdatasync Execute "files are written on both nodes";
    76 truncate Execute "files are written on both nodes";
    77 ftruncate Execute "files are written on both nodes";
    78 getdents Record "directory order differs between hosts";
    79 getcwd Execute "the replica's own working directory";
    80 chdir Execute "the replica's own working directory";
    81 fchdir Execute "the replica's own working directory";
    82 rename Execute "files are changed on both nodes";
    83 mkdir Execute "files are changed on both nodes";
    84 rmdir Execute "files are changed on both nodes";
    85 creat Execute "files are changed on both nodes";
    86 link Execute "files are changed on both nodes";
    87 unlink Execute "files are changed on both nodes";
    88 symlink Execute "files are changed on both nodes";
    89 readlink Record "links under /proc name host objects";
    90 chmod Execute "files are changed on both nodes";
    91 fchmod Execute "files are changed on both nodes";
    92 chown Execute "files are changed on both nodes";
    93 fchown Execute "files are changed on both nodes";
    94 lchown Execute "files are changed on both nodes";
    95 umask Execute "the replica's own state";
    96 gettimeofday Record "time is an input";
    97 getrlimit Execute "limits are recorded at start and set on replay";
    98 getrusage Record "CPU usage is host state";
    99 sysinfo Record "uptime, load and memory are host state";
    100 times Record "CPU usage is host state";
    101 ptrace Refuse "the supervisor is the replica's tracer";
    102 getuid Execute "credentials are the replica's own";
    103 syslog Refuse "reads the host kernel log";
    104 getgid Execute "credentials are the replica's own";
    105 setuid Execute "credentials are the replica's own";
    106 setgid Execute "credentials are the replica's own";
    107 geteuid Execute "credentials are the replica's own";
    108 getegid Execute "credentials are the replica's own";
    109 setpgid Execute "process groups live in the replica's PID namespace";
    110 getppid Execute "pids are identical";
    111 getpgrp Execute "pids are identical";
    112 setsid Execute "sessions live in the replica's PID namespace";
    113 setreuid Execute "credentials are the replica's own";
    114 setregid Execute "credentials are the replica's own";
    115 getgroups Execute "credentials are the replica's own";
    116 setgroups Execute "credentials are the replica's own";
    117 setresuid Execute "credentials are the replica's own";
    118 getresuid Execute "credentials are the replica's own";
    119 setresgid Execute "credentials are the replica's own";
    120 getresgid Execute "credentials are the replica's own";
    121 getpgid Execute "pids are identical";
    122 setfsuid Execute "credentials are the replica's own";
    123 setfsgid Execute "credentials are the replica's own";
    124 getsid Execute "pids are identical";
    125 capget Execute "credentials are the replica's own";
    126 capset Execute "credentials are the replica's own";
    127 rt_sigpending Record "pending signals may come from outside the tree";
    128 rt_sigtimedwait Refuse "dequeues signals the supervisor cannot see; not supported";
    129 rt_sigqueueinfo Intercept "runs natively; the target is then checked for a signal that must interrupt a blocked call";
    130 rt_sigsuspend Intercept "waits for a signal, which only the supervisor delivers";
    131 sigaltstack Execute "the replica's own state";
    132 utime Execute "files are changed on both nodes";
    133 mknod Execute "files are changed on both nodes";
    134 uselib Refuse "obsolete interface, removed from glibc";
    135 personality Intercept "ADDR_NO_RANDOMIZE must stay set";
    136 ustat Refuse "obsolete interface, removed from glibc";
    137 statfs Record "filesystem sizes are host state";
    138 fstatfs Record "filesystem sizes are host state";
    139 sysfs Refuse "obsolete interface, removed from glibc";
    140 getpriority Execute "the replica's own state";
    141 setpriority Execute "the replica's own state";
    142 sched_setparam Execute "the replica's own state";
    143 sched_getparam Execute "the replica's own state";
    144 sched_setscheduler Execute "the replica's own state";
    145 sched_getscheduler Execute "the replica's own state";
    146 sched_get_priority_max Execute "a constant of the kernel";
    147 sched_get_priority_min Execute "a constant of the kernel";
    148 sched_rr_get_interval Execute "a constant of the kernel";
    149 mlock Execute "the replica's own memory";
    150 munlock Execute "the replica's own memory";
    151 mlockall Execute "the replica's own memory";
    152 munlockall Execute "the replica's own memory";
    153 vhangup Refuse "acts on the host's terminal";
    154 modify_ldt Execute "the replica's own memory";
    155 pivot_root Refuse "changes mounts";
    156 _sysctl Refuse "obsolete interface, removed from glibc";
    157 prctl Intercept "PR_SET_TSC and seccomp changes would escape supervision";
    158 arch_prctl Execute "the replica's own thread state";
    159 adjtimex Refuse "reads or sets the host clock";
    160 setrlimit Execute "the replica's own limits";
    161 chroot Execute "the replica's own root";
    162 sync Execute "files are written on both nodes";
    163 acct Refuse "host accounting";
    164 settimeofday Refuse "sets the host clock";
    165 mount Refuse "changes mounts";
    166 umount2 Refuse "changes mounts";
    167 swapon Refuse "host administration";
    168 swapoff Refuse "host administration";
    169 reboot Refuse "host administration";
    170 sethostname Refuse "host administration";
    171 setdomainname Refuse "host administration";
    172 iopl Refuse "direct hardware access";
    173 ioperm Refuse "direct hardware access";
    174 create_module Refuse "kernel modules are host state";
    175 init_module Refuse "kernel modules are host state";
    176 delete_module Refuse "kernel modules are host state";
    177 get_kernel_syms Refuse "kernel modules are host state";
    178 query_module Refuse "kernel modules are host state";
    179 quotactl Refuse "host administration";
    180 nfsservctl Refuse "not implemented by Linux";
    181 getpmsg Refuse "not implemented by Linux";
    182 putpmsg Refuse "not implemented by Linux";
    183 afs_syscall Refuse "not implemented by Linux";
    184 tuxcall Refuse "not implemented by Linux";
    185 security Refuse "not implemented by Linux";
    186 gettid Execute "tids are identical: serialized clones";
    187 readahead Execute "a hint; files are identical";
    188 setxattr Execute "files are changed on both nodes";
    189 lsetxattr Execute "files are changed on both nodes";
    190 fsetxattr Execute "files are changed on both nodes";
    191 getxattr Execute "identical files on both nodes";
    192 lgetxattr Execute "identical files on both nodes";
    193 fgetxattr Execute "identical files on both nodes";
    194 listxattr Execute "identical files on both nodes";
    195 llistxattr Execute "identical files on both nodes";
    196 flistxattr Execute "identical files on both nodes";
    197 removexattr Execute "files are changed on both nodes";
    198 lremovexattr Execute "files are changed on both nodes";
    199 fremovexattr Execute "files are changed on both nodes";
    200 tkill Intercept "runs natively; the target is then checked for a signal that must interrupt a blocked call";
    201 time Record "time is an input";
    202 futex Intercept "waits are emulated so a waiting thread never holds the token";
    203 sched_setaffinity Record "the tree stays pinned to one CPU; the answer comes from the primary";
    204 sched_getaffinity Record "CPU sets differ between hosts";
    205 set_thread_area Execute "the replica's own thread state";
    206 io_setup Enosys "Linux AIO completes I/O outside syscall boundaries";
    207 io_destroy Enosys "Linux AIO completes I/O outside syscall boundaries";
    208 io_getevents Enosys "Linux AIO completes I/O outside syscall boundaries";
    209 io_submit Enosys "Linux AIO completes I/O outside syscall boundaries";
    210 io_cancel Enosys "Linux AIO completes I/O outside syscall boundaries";
    211 get_thread_area Execute "the replica's own thread state";
    212 lookup_dcookie Refuse "profiling interface";
    213 epoll_create Execute "creates an epoll set inside the tree";
    214 epoll_ctl_old Refuse "not implemented by Linux";
    215 epoll_wait_old Refuse "not implemented by Linux";
    216 remap_file_pages Execute "the replica's own memory";
    217 getdents64 Record "directory order differs between hosts";
    218 set_tid_address Execute "the replica's own thread state";
    219 restart_syscall Execute "restarts a call the kernel interrupted natively";
    220 semtimedop Refuse "can block inside the kernel while holding the token; not supported";
    221 fadvise64 Execute "a hint; files are identical";
    222 timer_create Refuse "POSIX timers are not emulated yet";
    223 timer_settime Refuse "POSIX timers are not emulated yet";
    224 timer_gettime Refuse "POSIX timers are not emulated yet";
    225 timer_getoverrun Refuse "POSIX timers are not emulated yet";
    226 timer_delete Refuse "POSIX timers are not emulated yet";
    227 clock_settime Refuse "sets the host clock";
    228 clock_gettime Record "time is an input";
    229 clock_getres Execute "a constant of the kernel";
    230 clock_nanosleep Record "sleeps take real time on the primary; replay follows the log";
    231 exit_group Intercept "the supervisor waits for every thread of the process to go";
    232 epoll_wait Record "readiness is an input";
    233 epoll_ctl Execute "registrations are real on both nodes";
    234 tgkill Intercept "runs natively; the target is then checked for a signal that must interrupt a blocked call";
    235 utimes Execute "files are changed on both nodes";
    236 vserver Refuse "not implemented by Linux";
    237 mbind Execute "the replica's own memory policy";
    238 set_mempolicy Execute "the replica's own memory policy";
    239 get_mempolicy Execute "the replica's own memory policy";
    240 mq_open Execute "POSIX queues live in the replica's own IPC namespace";
    241 mq_unlink Execute "POSIX queues live in the replica's own IPC namespace";
    242 mq_timedsend Refuse "can block inside the kernel while holding the token; not supported";
    243 mq_timedreceive Refuse "can block inside the kernel while holding the token; not supported";
    244 mq_notify Refuse "delivers signals outside syscall boundaries; not supported";
    245 mq_getsetattr Execute "POSIX queues live in the replica's own IPC namespace";
    246 kexec_load Refuse "host administration";
    247 waitid Intercept "blocks until a child exits; emulated so a waiting thread never holds the token";
    248 add_key Refuse "kernel keyrings are host state";
    249 request_key Refuse "kernel keyrings are host state";
    250 keyctl Refuse "kernel keyrings are host state";
    251 ioprio_set Execute "the replica's own state";
    252 ioprio_get Execute "the replica's own state";
    253 inotify_init Execute "events read from it are recorded";
    254 inotify_add_watch Execute "watch descriptors are the replica's own";
    255 inotify_rm_watch Execute "watch descriptors are the replica's own";
    256 migrate_pages Execute "the replica's own memory";
    257 openat Execute "identical files on both nodes; later reads are classified by descriptor";
    258 mkdirat Execute "files are changed on both nodes";
    259 mknodat Execute "files are changed on both nodes";
    260 fchownat Execute "files are changed on both nodes";
    261 futimesat Execute "files are changed on both nodes";
    262 newfstatat Record "inode, device and times differ between hosts";
    263 unlinkat Execute "files are changed on both nodes";
    264 renameat Execute "files are changed on both nodes";
    265 linkat Execute "files are changed on both nodes";
    266 symlinkat Execute "files are changed on both nodes";
    267 readlinkat Record "links under /proc name host objects";
    268 fchmodat Execute "files are changed on both nodes";
    269 faccessat Execute "identical files on both nodes";
    270 pselect6 Record "readiness is an input";
    271 ppoll Record "readiness is an input";
    272 unshare Refuse "namespaces are set up by ftnet";
    273 set_robust_list Execute "the replica's own thread state";
    274 get_robust_list Execute "the replica's own thread state";
    275 splice ByFd "moves bytes between descriptors; boundary descriptors are not supported yet";
    276 tee ByFd "moves bytes between descriptors; boundary descriptors are not supported yet";
    277 sync_file_range Execute "files are written on both nodes";
    278 vmsplice ByFd "moves bytes between descriptors; boundary descriptors are not supported yet";
    279 move_pages Execute "the replica's own memory";
    280 utimensat Execute "files are changed on both nodes";
    281 epoll_pwait Record "readiness is an input";
    282 signalfd Refuse "its reads dequeue signals the supervisor cannot see; not supported";
    283 timerfd_create Execute "expirations read from it are recorded";
    284 eventfd Execute "creates an eventfd inside the tree";
    285 fallocate Execute "files are changed on both nodes";
    286 timerfd_settime Record "the remaining time it reports is an input";
    287 timerfd_gettime Record "the remaining time it reports is an input";
    288 accept4 Record "a new client connection is an input";
    289 signalfd4 Refuse "its reads dequeue signals the supervisor cannot see; not supported";
    290 eventfd2 Execute "creates an eventfd inside the tree";
    291 epoll_create1 Execute "creates an epoll set inside the tree";
    292 dup3 Intercept "replaces a descriptor the supervisor may have classified";
    293 pipe2 Execute "creates a pipe inside the tree";
    294 inotify_init1 Execute "events read from it are recorded";
    295 preadv ByFd "as pread64";
    296 pwritev ByFd "as pwrite64";
    297 rt_tgsigqueueinfo Intercept "runs natively; the target is then checked for a signal that must interrupt a blocked call";
    298 perf_event_open Refuse "performance counters are host state";
    299 recvmmsg ByFd "as read: boundary input recorded, file reads verified";
    300 fanotify_init Refuse "watches the host's files";
    301 fanotify_mark Refuse "watches the host's files";
    302 prlimit64 Execute "the replica's own limits";
    303 name_to_handle_at Refuse "file handles are host state";
    304 open_by_handle_at Refuse "file handles are host state";
    305 clock_adjtime Refuse "reads or sets the host clock";
    306 syncfs Execute "files are written on both nodes";
    307 sendmmsg ByFd "as write: client output performed once and digested";
    308 setns Refuse "namespaces are set up by ftnet";
    309 getcpu Record "the CPU number is host state";
    310 process_vm_readv Execute "only processes of the replica's own PID namespace can be named";
    311 process_vm_writev Execute "only processes of the replica's own PID namespace can be named";
    312 kcmp Execute "compares the replica's own objects";
    313 finit_module Refuse "kernel modules are host state";
    314 sched_setattr Execute "the replica's own state";
    315 sched_getattr Execute "the replica's own state";
    316 renameat2 Execute "files are changed on both nodes";
    317 seccomp Intercept "a second listener would take notifications away from the supervisor";
    318 getrandom Record "randomness is an input";
    319 memfd_create Execute "creates a file inside the tree";
    320 kexec_file_load Refuse "host administration";
    321 bpf Refuse "BPF programs and maps are host state";
    322 execveat Execute "followed through the ptrace exec event";
    323 userfaultfd Refuse "page faults would be served outside syscall boundaries";
    324 membarrier Execute "orders the replica's own memory";
    325 mlock2 Execute "the replica's own memory";
    326 copy_file_range Execute "copies between files, which are identical on both nodes";
    327 preadv2 ByFd "as pread64";
    328 pwritev2 ByFd "as pwrite64";
    329 pkey_mprotect Execute "the replica's own memory";
    330 pkey_alloc Execute "the replica's own memory";
    331 pkey_free Execute "the replica's own memory";
    332 statx Record "inode, device and times differ between hosts";
    333 io_pgetevents Enosys "Linux AIO completes I/O outside syscall boundaries";
    334 rseq Enosys "the kernel writes the CPU number into user memory at preemption";
    424 pidfd_send_signal Intercept "runs natively; the target is then checked for a signal that must interrupt a blocked call";
    425 io_uring_setup Enosys "io_uring performs I/O outside syscall boundaries";
    426 io_uring_enter Enosys "io_uring performs I/O outside syscall boundaries";
    427 io_uring_register Enosys "io_uring performs I/O outside syscall boundaries";
    428 open_tree Refuse "changes mounts";
    429 move_mount Refuse "changes mounts";
    430 fsopen Refuse "changes mounts";
    431 fsconfig Refuse "changes mounts";
    432 fsmount Refuse "changes mounts";
    433 fspick Refuse "changes mounts";
    434 pidfd_open Execute "only processes of the replica's own PID namespace can be named";
    435 clone3 Enosys "its flags live in memory the filter cannot read; glibc falls back to clone";
    436 close_range Intercept "closes descriptors the supervisor may have classified";
    437 openat2 Execute "identical files on both nodes";
    438 pidfd_getfd Execute "only processes of the replica's own PID namespace can be named";
    439 faccessat2 Execute "identical files on both nodes";
    440 process_madvise Execute "only processes of the replica's own PID namespace can be named";
    441 epoll_pwait2 Record "readiness is an input";
    442 mount_setattr Refuse "changes mounts";
    443 quotactl_fd Refuse "host administration";
    444 landlock_create_ruleset Execute "the replica's own sandbox";
    445 landlock_add_rule Execute "the replica's own sandbox";
    446 landlock_restrict_self Execute "the replica's own sandbox";
    447 memfd_secret Execute "the replica's own memory";
    448 process_mrelease Execute "only processes of the replica's own PID namespace can be named";
    449 futex_waitv Enosys "vectored futex waits are not emulated; callers fall back";
    450 set_mempolicy_home_node Execute "the replica's own memory policy";
    451 cachestat Refuse "page cache residency is host state";
    452 fchmodat2 Execute "files are changed on both nodes";
    453 map_shadow_stack Execute "the replica's own memory";
    454 futex_wake Enosys "futex2 calls are not emulated; callers fall back";
    455 futex_wait Enosys "futex2 calls are not emulated; callers fall back";
    456 futex_requeue Enosys "futex2 calls are not emulated; callers fall back";
    457 statmount Refuse "mount details are host state";
    458 listmount Refuse "mount details are host state";
    459 lsm_get_self_attr Execute "the replica's own security attributes";
    460 lsm_set_self_attr Execute "the replica's own security attributes";
    461 lsm_list_modules Execute "a constant of the kernel";
    462 mseal Execute "the replica's own memory";
    463 setxattrat Execute "files are changed on both nodes";
    464 getxattrat Execute "identical files on both nodes";
    465 listxattrat Execute "identical files on both nodes";
    466 removexattrat Execute "files are changed on both nodes";
    467 open_tree_attr Refuse "changes mounts";
    468 file_getattr Execute "identical files on both nodes";
    469 file_setattr Execute "files are changed on both nodes";
}

/// The entry for `nr`, if the table classifies it.
pub fn lookup(nr: u32) -> Option<&'static Entry> {
    TABLE.binary_search_by_key(&nr, |e| e.nr).ok().map(|i| &TABLE[i])
}

/// The name of `nr` for messages (`syscall_N` when unclassified).
pub fn name(nr: u32) -> String {
    lookup(nr).map(|e| e.name.to_string()).unwrap_or_else(|| format!("syscall_{nr}"))
}

/// Looks a call up by name.
pub fn by_name(name: &str) -> Option<&'static Entry> {
    TABLE.iter().find(|e| e.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_and_exhaustive() {
        for w in TABLE.windows(2) {
            assert!(w[0].nr < w[1].nr, "{} before {}", w[0].name, w[1].name);
        }
        for nr in (0..=334).chain(424..=469) {
            assert!(lookup(nr).is_some(), "syscall {nr} is unclassified");
        }
        assert!(lookup(335).is_none());
        assert!(lookup(470).is_none());
    }

    #[test]
    fn numbers_match_libc() {
        let known: &[(&str, i64)] = &[
            ("read", libc::SYS_read),
            ("write", libc::SYS_write),
            ("close", libc::SYS_close),
            ("poll", libc::SYS_poll),
            ("ioctl", libc::SYS_ioctl),
            ("select", libc::SYS_select),
            ("sendfile", libc::SYS_sendfile),
            ("accept", libc::SYS_accept),
            ("wait4", libc::SYS_wait4),
            ("uname", libc::SYS_uname),
            ("fcntl", libc::SYS_fcntl),
            ("getdents64", libc::SYS_getdents64),
            ("futex", libc::SYS_futex),
            ("epoll_wait", libc::SYS_epoll_wait),
            ("exit_group", libc::SYS_exit_group),
            ("clock_gettime", libc::SYS_clock_gettime),
            ("openat", libc::SYS_openat),
            ("newfstatat", libc::SYS_newfstatat),
            ("pselect6", libc::SYS_pselect6),
            ("ppoll", libc::SYS_ppoll),
            ("epoll_pwait", libc::SYS_epoll_pwait),
            ("accept4", libc::SYS_accept4),
            ("dup3", libc::SYS_dup3),
            ("recvmmsg", libc::SYS_recvmmsg),
            ("sendmmsg", libc::SYS_sendmmsg),
            ("getrandom", libc::SYS_getrandom),
            ("statx", libc::SYS_statx),
            ("rseq", libc::SYS_rseq),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("clone3", libc::SYS_clone3),
            ("close_range", libc::SYS_close_range),
            ("epoll_pwait2", libc::SYS_epoll_pwait2),
            ("futex_waitv", libc::SYS_futex_waitv),
        ];
        for (name, nr) in known {
            let e = by_name(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(e.nr as i64, *nr, "{name}");
        }
    }

    /// Cross-checks every name and number against the kernel headers
    /// (linux-libc-dev, installed with libc6-dev) for the calls they know.
    #[test]
    fn numbers_match_kernel_headers() {
        let path = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
        let text = std::fs::read_to_string(path).expect("kernel headers (linux-libc-dev) are installed");
        let mut checked = 0;
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("#define") {
                continue;
            }
            let (Some(name), Some(nr)) = (w.next(), w.next()) else { continue };
            let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<u32>()) else { continue };
            let e = lookup(nr).unwrap_or_else(|| panic!("{name} ({nr}) is unclassified"));
            assert_eq!(e.name, name, "number {nr}");
            checked += 1;
        }
        assert!(checked > 350, "only {checked} calls in {path}");
    }

    #[test]
    fn every_entry_has_a_reason() {
        for e in TABLE {
            assert!(e.why.len() > 8, "{} needs a reason", e.name);
        }
    }
}
