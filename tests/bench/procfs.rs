//! Memory and CPU of processes, read from `/proc`, and the control plane's
//! processes found through the state directory `tests/controlplane/up` writes.

use std::path::Path;
use std::sync::OnceLock;

/// Memory figures of a process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Memory {
    /// Resident set size now.
    pub rss_kib: u64,
    /// Peak resident set size ("high water mark").
    pub hwm_kib: u64,
}

/// `VmRSS` and `VmHWM` of `pid`.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Memory { rss_kib: status_kib(&status, "VmRSS")?, hwm_kib: status_kib(&status, "VmHWM")? })
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// User plus system CPU seconds `pid` has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name may hold
/// spaces and parentheses, so fields are counted after the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A process of the control plane whose CPU use is reported alongside.
#[derive(Clone, Debug)]
pub struct PlaneProcess {
    /// Its name (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub name: &'static str,
    /// Its pid.
    pub pid: u32,
}

/// The plane's processes, when `kubeconfig` sits in a state directory of
/// `tests/controlplane/up` on this machine (pid files beside it).
pub fn plane_processes(kubeconfig: &Path) -> Vec<PlaneProcess> {
    let Some(dir) = kubeconfig.parent() else { return Vec::new() };
    ["kube-apiserver", "etcd", "kube-controller-manager"]
        .into_iter()
        .filter_map(|name| {
            let pid: u32 = std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok()?.trim().parse().ok()?;
            // Only if the pid is still that program.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(name).then_some(PlaneProcess { name, pid })
        })
        .collect()
}

/// CPU seconds of each process, in the same order.
pub fn cpu_of(processes: &[PlaneProcess]) -> Vec<f64> {
    processes.iter().map(|p| cpu_seconds(p.pid).unwrap_or(0.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tengine-bench\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(40960));
        assert_eq!(status_kib(status, "VmHWM"), Some(51234));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = std::process::id();
        assert!(memory(me).is_some_and(|m| m.rss_kib > 0 && m.hwm_kib >= m.rss_kib));
        assert!(cpu_seconds(me).is_some());
    }
}
