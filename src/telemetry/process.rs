//! The process's own figures (CPU time, memory, file descriptors, start time), read from
//! `/proc/self` at each scrape under Prometheus' standard `process_*` names.
//! prometheus-client has no process collector, so this is one.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Reads `/proc/self` when scraped; on a system without it, exports nothing.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What `/proc/self` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

impl Figures {
    /// The current process's figures, or `None` where `/proc` cannot be read.
    pub fn read() -> Option<Figures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        // SAFETY: sysconf has no preconditions.
        #[allow(unsafe_code)]
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        parse(
            &stat,
            &boot,
            &limits,
            ticks as f64,
            page.max(0) as u64,
            open_fds,
        )
    }
}

/// Figures from `/proc/self/stat`, `/proc/stat` and `/proc/self/limits` texts.
fn parse(
    stat: &str,
    boot: &str,
    limits: &str,
    ticks: f64,
    page: u64,
    open_fds: u64,
) -> Option<Figures> {
    // The command name (field 2) may hold spaces and parentheses: fields 3 on follow the
    // last `)`, so field N is at index N - 3.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    if ticks <= 0.0 {
        return None;
    }
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok());
    Some(Figures {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: btime as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        open_fds,
        max_fds,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(f) = Figures::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(f.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(Unit::Bytes),
                f.resident_bytes as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes",
                Some(Unit::Bytes),
                f.virtual_bytes as f64,
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds",
                Some(Unit::Seconds),
                f.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                None,
                f.open_fds as f64,
            ),
            (
                "process_threads",
                "Number of OS threads",
                None,
                f.threads as f64,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        if let Some(max) = f.max_fds {
            let gauge = ConstGauge::new(max as f64);
            gauge.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis, as `comm` may have.
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let f = parse(stat, boot, limits, 100.0, 4096, 9).unwrap();
        assert_eq!(f.cpu_seconds, 3.0);
        assert_eq!(f.threads, 7);
        assert!((f.start_time_seconds - 1_700_000_123.45).abs() < 1e-3);
        assert_eq!(f.virtual_bytes, 104_857_600);
        assert_eq!(f.resident_bytes, 2560 * 4096);
        assert_eq!((f.open_fds, f.max_fds), (9, Some(1024)));
        assert!(parse("garbage", boot, limits, 100.0, 4096, 0).is_none());
    }

    #[test]
    fn this_process_has_figures() {
        let f = Figures::read().expect("/proc/self is readable on Linux");
        assert!(f.resident_bytes > 0 && f.open_fds > 0 && f.threads > 0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(f.start_time_seconds > 1.6e9 && f.start_time_seconds <= now + 1.0);
    }
}
