//! The server's limits: what one client and the whole server may use, with the reason for
//! each default, and how they are fitted to what the kernel allows.

use std::thread;
use std::time::Duration;

use super::throttle::ThrottlePolicy;
use crate::protocol::AnnouncedLimits;

/// The server's limits. Every one is configurable; the defaults suit a small team on one
/// machine and are what the protocol spec documents.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame a client may send, in bytes. 16 KiB holds the longest end-to-end
    /// message (8 KiB of text, about 11 KiB once sealed and base64-encoded) with its `MSG`
    /// header, and the key-exchange frames. Below about 11,000 bytes, long private
    /// messages would be refused.
    pub max_frame: usize,
    /// Time allowed for the TLS handshake; a silent or trickling peer is cut off after it.
    pub handshake_timeout: Duration,
    /// Time allowed from accepting a connection to a successful login. 20 s is ample for
    /// a client that logs in at once (a person types the password before connecting) and
    /// short enough that an anonymous connection cannot be held for long.
    pub login_timeout: Duration,
    /// A logged-in client that sends no complete frame for this long is disconnected.
    /// Clients send `PING` to stay connected while their user is idle.
    pub idle_timeout: Duration,
    /// A client whose socket accepts no data for this long (it stopped reading, or its
    /// host vanished) is disconnected, even when its queue never fills (0 = never).
    pub send_timeout: Duration,
    /// Connections served at once; more are refused at accept.
    pub max_connections: usize,
    /// Connections from one IP address at once (0 = no limit).
    pub max_connections_per_ip: usize,
    /// Bytes that may wait in the priority part of a logged-in client's outbound queue
    /// (replies, private messages, notices). A client that stops reading reaches it and is
    /// disconnected. 256 KiB is several seconds of a busy chat.
    pub outbound_queue_bytes: usize,
    /// The kernel send buffer of each client socket, in bytes (0 = the kernel's own
    /// choice, which grows up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default). A
    /// smaller one bounds the kernel memory a slow reader pins and makes the outbound
    /// queue, not the kernel, decide what waits; it also caps throughput to one client at
    /// this size per round trip.
    pub socket_send_buffer: usize,
    /// Bytes of room lines that may wait for one client. Room lines that do not fit are
    /// skipped and the client is told `SKIPPED <n>`: a slow reader loses room lines, never
    /// its connection, and a room burst costs the server at most this much per recipient.
    /// 64 KiB holds four of the longest lines.
    pub room_queue_bytes: usize,
    /// Bytes that may wait in the outbound queue of a client that has not logged in. An
    /// anonymous client only gets short replies (`PONG`, `ERR`, `OK REGISTER`), so 4 KiB is
    /// dozens of them; a client that sends requests without reading the replies reaches
    /// it and is disconnected, so it cannot make the server hold its replies.
    pub anonymous_queue_bytes: usize,
    /// Longest `PING` token a client that has not logged in may send. 64 bytes is room for
    /// any counter or timestamp; a longer token is refused with `ERR PING bad-frame`, so
    /// an anonymous client cannot have the server echo (and queue) kilobytes.
    pub anonymous_ping_token: usize,
    /// Connections that have not logged in yet, server-wide (0 = no limit). Past it new
    /// connections are refused at accept, so anonymous ones cannot crowd out the
    /// `max_connections` places of users who log in.
    pub max_anonymous: usize,
    /// Connections that have not logged in yet from one network (a /24 or /64, see
    /// `AddressPrefix`; 0 = no limit). Logging in takes a second or two, so even a campus
    /// behind one address rarely has more than a few waiting at once; 64 leaves room for
    /// that and keeps a single network to an eighth of `max_anonymous`.
    pub max_anonymous_per_network: usize,
    /// bcrypt computations at once (logins and registrations queue for a worker).
    pub bcrypt_concurrency: usize,
    /// Frames per second one client may send on average (0 = no limit). Frames over the
    /// limit are refused with `rate-limited`. 20/s is far above human typing.
    pub message_rate: u32,
    /// Frames one client may send at once above the average (a pasted block of lines).
    pub message_burst: u32,
    /// Room bytes one user may cause the server to send, per second on average: each
    /// `ROOM` line is charged its length times the number of recipients (0 = no limit).
    /// Over it, `SAY` is refused with `rate-limited`. 4 MiB/s lets a user of a 40-person
    /// room say 100 KiB a second, and keeps one user of a 10,000-person room from making
    /// the server send more than that whatever it says.
    pub room_fanout_rate: u32,
    /// Room bytes one user may cause at once above the average: 16 MiB is a pasted block
    /// of 100 KiB to 160 recipients.
    pub room_fanout_burst: u32,
    /// Key exchanges (`DH-INIT` payloads) one user may start with another per
    /// `exchange_window` (0 = no limit); more are refused with `ERR MSG rate-limited`.
    /// Each start costs its recipient an exponentiation and, from a stranger, a prompt;
    /// an honest client starts one per session and a few more on re-keying or a crossed
    /// start, so 5 a minute is ample.
    pub exchange_starts: u32,
    /// The window `exchange_starts` counts in.
    pub exchange_window: Duration,
    /// Room lines the server keeps and replays at login to clients that ask (0 = off:
    /// nothing is stored or replayed, and lines stored before are deleted at start). The
    /// room is already readable by the server (it is protected by TLS only), so keeping
    /// some of it adds no new exposure; 50 lines is a screenful of context for someone
    /// who just arrived. Each line costs up to one frame of memory in the router, so the
    /// command line caps it at [`MAX_ROOM_HISTORY`].
    pub room_history: usize,
    /// How long a message stored for offline delivery (`SEND`) waits for its recipient's
    /// `ACK` before it expires and its sender is told `expired`. 14 days: long enough for
    /// a holiday, short enough that an abandoned account does not keep mail for ever.
    pub queue_ttl: Duration,
    /// Messages stored for one recipient; more are refused (`STATUS … refused … quota`).
    /// 1,000 bounds what one login replays and what strangers can pile up.
    pub queue_max: u64,
    /// Payload bytes stored for one recipient; more are refused like `queue_max`. 4 MiB is
    /// a few hundred long messages, and bounds the replay at login (the outbound bound of
    /// that connection is raised by the replay's size, so replaying it never evicts).
    pub queue_max_bytes: u64,
    /// Failed-login back-off and registration limits.
    pub throttle: ThrottlePolicy,
}

/// The most room lines `--room-history` accepts: at the default frame size, at most
/// 16 MiB of the router's memory (a replay sends at most a room queue's worth of them).
pub const MAX_ROOM_HISTORY: usize = 1000;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame: AnnouncedLimits::DEFAULT.max_frame,
            handshake_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            outbound_queue_bytes: 256 * 1024,
            socket_send_buffer: 0,
            room_queue_bytes: 64 * 1024,
            anonymous_queue_bytes: 4 * 1024,
            anonymous_ping_token: 64,
            max_anonymous: 512,
            max_anonymous_per_network: 64,
            bcrypt_concurrency: thread::available_parallelism().map_or(2, |n| n.get()),
            room_fanout_rate: 4 << 20,
            room_fanout_burst: 16 << 20,
            exchange_starts: 5,
            exchange_window: Duration::from_secs(60),
            message_rate: AnnouncedLimits::DEFAULT.rate,
            message_burst: AnnouncedLimits::DEFAULT.burst,
            room_history: 50,
            queue_ttl: Duration::from_secs(14 * 24 * 3600),
            queue_max: 1000,
            queue_max_bytes: 4 << 20,
            throttle: ThrottlePolicy::default(),
        }
    }
}

/// Memory mappings one connection costs: two threads, each with a stack and its guard
/// page (glibc) and a signal stack and its guard page (Rust's standard library).
const MAPPINGS_PER_CONNECTION: usize = 8;

/// Mappings and thread ids left for everything else (libraries, allocator arenas, the
/// pool threads, other processes' threads).
const KERNEL_MARGIN: usize = 2048;

/// Fits the limits to what this kernel allows, and sizes its futex hash for the thread
/// count, before any thread is started.
///
/// Past `vm.max_map_count` a thread that was created can fail to map its signal stack,
/// and the standard library then aborts the whole process; so the connection limit is
/// lowered (with a warning that says how to raise the kernel's) and admission refuses
/// newcomers cleanly instead. Linux 6.16 and later give each process a private futex hash
/// of a few buckets; with thousands of sleeping threads every wake-up walks a long bucket
/// (measured: 8,000 idle clients more than doubled the CPU per message), so it is enlarged.
pub(super) fn fit_to_kernel(limits: &mut Limits) {
    if let Some(ceiling) = kernel_connection_ceiling().filter(|&c| c < limits.max_connections) {
        log::warn!(
            "serving at most {ceiling} connections, not {}: the kernel allows this process \
             only so many threads and memory mappings (each connection needs 2 threads, \
             {MAPPINGS_PER_CONNECTION} mappings). To serve more, raise them, for example \
             `sysctl -w vm.max_map_count=262144`",
            limits.max_connections
        );
        limits.max_connections = ceiling;
    }
    let slots = (2 * limits.max_connections)
        .next_power_of_two()
        .clamp(16, 65_536);
    // PR_FUTEX_HASH (78), PR_FUTEX_HASH_SET_SLOTS (1): Linux 6.16 and later; older kernels
    // answer EINVAL and keep their global hash, which does not have the problem.
    // SAFETY: prctl with integer arguments only; it changes this process's futex table.
    let resized = unsafe { libc::prctl(78, 1, slots as libc::c_ulong, 0, 0) } == 0;
    if resized {
        log::debug!("futex hash: {slots} slots");
    }
}

/// How many connections this kernel lets a server process hold (`vm.max_map_count`,
/// `kernel.pid_max`, `kernel.threads-max`, less what the calling process already maps):
/// `None` when they cannot be read. A server lowers its `max_connections` to this at start.
pub fn kernel_connection_ceiling() -> Option<usize> {
    let read =
        |path: &str| -> Option<usize> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let mappings_now = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    let thread_ids = match (
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/kernel/threads-max"),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    connection_ceiling(read("/proc/sys/vm/max_map_count"), mappings_now, thread_ids)
}

/// How many connections the kernel's limits leave room for: `None` when unknown.
fn connection_ceiling(
    max_map_count: Option<usize>,
    mappings_now: usize,
    thread_ids: Option<usize>,
) -> Option<usize> {
    let by_mappings = max_map_count
        .map(|max| max.saturating_sub(mappings_now + KERNEL_MARGIN) / MAPPINGS_PER_CONNECTION);
    let by_threads = thread_ids.map(|ids| ids.saturating_sub(KERNEL_MARGIN) / 2);
    match (by_mappings, by_threads) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sets `socket`'s kernel send buffer to `bytes` (the kernel doubles it for its own
/// bookkeeping, and keeps it above its minimum); 0 leaves the kernel's choice.
pub(super) fn set_send_buffer(socket: &std::net::TcpStream, bytes: usize) -> std::io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads `size`, an int as SO_SNDBUF expects, for the call only.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises this process's soft open-file limit to its hard limit (each connection is a
/// file descriptor). Returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_ceiling_follows_the_tighter_kernel_limit() {
        // Linux defaults: 65,530 mappings, 32,768 thread ids.
        assert_eq!(
            connection_ceiling(Some(65_530), 400, Some(32_768)),
            Some(7_885)
        );
        assert_eq!(
            connection_ceiling(Some(1_000_000), 400, Some(32_768)),
            Some(15_360)
        );
        assert_eq!(connection_ceiling(None, 400, None), None);
        assert_eq!(connection_ceiling(Some(100), 400, None), Some(0));
    }

    /// One test for everything `fit_to_kernel` does: the futex hash is per process, so
    /// two tests sizing it at once would race.
    #[test]
    fn limits_are_lowered_to_what_the_kernel_allows_never_raised_and_the_futex_hash_fits() {
        // PR_FUTEX_HASH (78), PR_FUTEX_HASH_GET_SLOTS (2): this process's futex hash slots,
        // or an error before Linux 6.16 (no private hash to size).
        // SAFETY: prctl with integer arguments only; it reads a number.
        let slots = || unsafe { libc::prctl(78, 2, 0, 0, 0) };
        let sized = slots() >= 0;

        let mut limits = Limits {
            max_connections: usize::MAX / 16,
            ..Limits::default()
        };
        fit_to_kernel(&mut limits);
        assert!(limits.max_connections < usize::MAX / 16);
        if sized {
            let wanted = (2 * limits.max_connections).next_power_of_two().min(65_536);
            assert_eq!(slots() as usize, wanted);
        }

        let mut small = Limits {
            max_connections: 3_000,
            ..Limits::default()
        };
        fit_to_kernel(&mut small);
        assert_eq!(small.max_connections, 3_000);
        if sized {
            assert_eq!(slots(), 8_192, "the power of two above 2 x 3,000 threads");
        } else {
            eprintln!("this kernel has no private futex hash (before Linux 6.16)");
        }
    }
}
