//! Regions as real hosts behind real, slow links, for whole-system tests.
//!
//! The test's own network namespace is the data centre: the hub and the S3 server run there
//! (in the test process). Each region is a network namespace with a bridge; each of its nodes
//! is a namespace of its own, wired to the bridge with a veth pair. The region's uplink is a
//! veth pair between the data centre and the region, shaped with `tc tbf` on the data
//! centre's side, the direction the data flows. Spokes run as processes inside their node's
//! namespace (`nsenter --net`, which leaves the mount namespace shared, so the FUSE mounts
//! they host are visible to the test).
//!
//! Addresses: region `r`'s uplink is `10.200.S.(4r+1)` (data centre) / `.(4r+2)` (region);
//! its nodes are `10.(201+r).S.(10+i)`, where `S` is this topology's *slot*, taken with a lock
//! file so that tests running at the same time never share an address or a name. Everything
//! (namespaces, links, processes, mounts) is removed on drop, also when the test panics, and
//! leftovers of a crashed run (a slot whose owner is gone) are removed when a slot is taken.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where slot locks live.
const SLOTS: &str = "/tmp/aqueduct-netns-slots";

/// What this machine lacks to build a topology, with the command that fixes it.
pub fn missing() -> Option<String> {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("network namespaces need root: run the tests as root".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("tc", "iproute2"), ("nsenter", "util-linux")] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("`{tool}` is missing: apt-get install -y {package}"));
        }
    }
    None
}

/// Fails under `CI=true` when the topology cannot be built; elsewhere says why and returns
/// false (the test then skips).
pub fn available() -> bool {
    match missing() {
        None => true,
        Some(why) => {
            assert!(std::env::var("CI").is_err(), "{why}");
            eprintln!("skipped: {why}");
            false
        }
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn sh(args: &[&str]) {
    run(args).unwrap_or_else(|e| panic!("{e}"));
}

/// `ip` inside namespace `ns`.
fn ip_in(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "-n", ns];
    all.extend_from_slice(args);
    sh(&all);
}

pub struct Node {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

pub struct RegionNet {
    pub name: String,
    pub ns: String,
    /// The uplink's data-centre end (in the test's namespace), and its address: the hub's
    /// address as this region sees it.
    pub uplink: String,
    pub hub_ip: Ipv4Addr,
    pub region_ip: Ipv4Addr,
    pub nodes: Vec<Node>,
}

pub struct Topology {
    pub slot: u8,
    tag: String,
    pub regions: Vec<RegionNet>,
    /// Directories under which the spokes mount: unmounted on drop if anything is left.
    pub mount_roots: Vec<PathBuf>,
}

impl Topology {
    /// Builds the regions (`(name, nodes, link rate in bytes per second)`).
    pub fn build(regions: &[(&str, usize, u64)]) -> Topology {
        let slot = take_slot();
        let tag = format!("aqt{slot}");
        let mut topology = Topology { slot, tag: tag.clone(), regions: Vec::new(), mount_roots: Vec::new() };
        for (r, &(name, nodes, rate)) in regions.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            sh(&["ip", "netns", "add", &ns]);
            let uplink = format!("{tag}u{r}");
            let hub_ip = Ipv4Addr::new(10, 200, slot, 4 * r as u8 + 1);
            let region_ip = Ipv4Addr::new(10, 200, slot, 4 * r as u8 + 2);
            let lan = Ipv4Addr::new(10, 201 + r as u8, slot, 0);
            topology.regions.push(RegionNet {
                name: name.to_string(),
                ns: ns.clone(),
                uplink: uplink.clone(),
                hub_ip,
                region_ip,
                nodes: Vec::new(),
            });
            sh(&["ip", "link", "add", &uplink, "type", "veth", "peer", "name", "uplink", "netns", &ns]);
            sh(&["ip", "addr", "add", &format!("{hub_ip}/30"), "dev", &uplink]);
            sh(&["ip", "link", "set", &uplink, "up"]);
            ip_in(&ns, &["addr", "add", &format!("{region_ip}/30"), "dev", "uplink"]);
            ip_in(&ns, &["link", "set", "lo", "up"]);
            ip_in(&ns, &["link", "set", "dev", "uplink", "up"]);
            ip_in(&ns, &["link", "add", "br0", "type", "bridge"]);
            ip_in(&ns, &["addr", "add", &format!("{}/24", with_last(lan, 1)), "dev", "br0"]);
            ip_in(&ns, &["link", "set", "br0", "up"]);
            sh(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            // The data centre reaches the region's nodes through its uplink.
            sh(&["ip", "route", "replace", &format!("{lan}/24"), "via", &region_ip.to_string()]);
            topology.shape(r, rate);
            for i in 0..nodes {
                let node_ns = format!("{tag}-{name}-{}", i + 1);
                sh(&["ip", "netns", "add", &node_ns]);
                let port = format!("n{i}");
                ip_in(&ns, &["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node_ns]);
                ip_in(&ns, &["link", "set", &port, "master", "br0"]);
                ip_in(&ns, &["link", "set", &port, "up"]);
                let ip = with_last(lan, 10 + i as u8);
                ip_in(&node_ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
                ip_in(&node_ns, &["link", "set", "lo", "up"]);
                ip_in(&node_ns, &["link", "set", "eth0", "up"]);
                ip_in(&node_ns, &["route", "add", "default", "via", &with_last(lan, 1).to_string()]);
                topology.regions[r].nodes.push(Node { name: format!("{name}-{}", i + 1), ns: node_ns, ip });
            }
            topology.restore(r);
        }
        topology
    }

    /// Shapes region `r`'s downlink (data centre to region) to `rate` bytes per second.
    pub fn shape(&self, r: usize, rate: u64) {
        let bits = format!("{}bit", rate * 8);
        // A burst of a few milliseconds' worth, at least one jumbo packet's.
        let burst = format!("{}", (rate / 250).max(16 * 1024));
        sh(&[
            "tc",
            "qdisc",
            "replace",
            "dev",
            &self.regions[r].uplink,
            "root",
            "tbf",
            "rate",
            &bits,
            "burst",
            &burst,
            "latency",
            "100ms",
        ]);
    }

    /// Bytes that went down region `r`'s link so far (data centre to region): the
    /// uplink's transmit counter.
    pub fn sent_to(&self, r: usize) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/tx_bytes", self.regions[r].uplink);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.trim().parse().unwrap_or_else(|e| panic!("{path}: {text:?}: {e}"))
    }

    /// Cuts region `r`'s link (its end goes down: nothing passes either way).
    pub fn cut(&self, r: usize) {
        ip_in(&self.regions[r].ns, &["link", "set", "dev", "uplink", "down"]);
    }

    /// Brings region `r`'s link back (and its route to the data centre, which went with it).
    pub fn restore(&self, r: usize) {
        let region = &self.regions[r];
        ip_in(&region.ns, &["link", "set", "dev", "uplink", "up"]);
        ip_in(&region.ns, &["route", "replace", "default", "via", &region.hub_ip.to_string()]);
    }

    /// A command that runs `program` inside `node`'s network namespace.
    pub fn command(&self, node: &Node, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", node.ns)).arg("--").arg(program);
        cmd
    }

    /// This topology's namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        namespaces_of(&self.tag)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for root in &self.mount_roots {
            unmount_under(root);
        }
        remove(&self.tag);
        let _ = std::fs::remove_file(Path::new(SLOTS).join(self.slot.to_string()));
    }
}

fn with_last(net: Ipv4Addr, last: u8) -> Ipv4Addr {
    let o = net.octets();
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

fn namespaces_of(tag: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{tag}-")))
        .map(str::to_string)
        .collect()
}

/// Removes every namespace and data-centre link of a topology's `tag` (deleting one end of a
/// veth pair deletes both).
fn remove(tag: &str) {
    for ns in namespaces_of(tag) {
        let _ = run(&["ip", "netns", "del", &ns]);
    }
    let out = Command::new("ip").args(["-o", "link", "show"]).output().map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&out).lines() {
        if let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n))
            && name.starts_with(&format!("{tag}u"))
        {
            let _ = run(&["ip", "link", "del", name]);
        }
    }
}

/// Lazily unmounts every mount under `root` (FUSE mounts of spokes that were killed).
pub fn unmount_under(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        if let Some(point) = line.split_whitespace().nth(1)
            && Path::new(point).starts_with(root)
        {
            let _ = run(&["umount", "-l", point]);
        }
    }
}

/// Takes a free slot (1 to 250); a slot whose owner is gone is cleaned and taken. A slot file
/// appears with its owner's pid already in it (written aside, then hard-linked into place,
/// which fails if the slot is taken), and a stale one is renamed away before it is reused
/// (only one taker's rename can succeed), so two tests never share a slot.
fn take_slot() -> u8 {
    std::fs::create_dir_all(SLOTS).unwrap();
    let me = std::process::id();
    let mine = Path::new(SLOTS).join(format!(".pid-{me}-{:?}", std::thread::current().id()));
    std::fs::write(&mine, me.to_string()).unwrap();
    let taken = (1..=250u8).find(|&slot| {
        let path = Path::new(SLOTS).join(slot.to_string());
        if std::fs::hard_link(&mine, &path).is_ok() {
            return true;
        }
        let owner = std::fs::read_to_string(&path).unwrap_or_default();
        let alive = owner.trim().parse::<u32>().is_ok_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
        if alive {
            return false;
        }
        let aside = Path::new(SLOTS).join(format!(".stale-{slot}-{me}"));
        if std::fs::rename(&path, &aside).is_err() {
            return false;
        }
        let _ = std::fs::remove_file(&aside);
        std::fs::hard_link(&mine, &path).is_ok()
    });
    let _ = std::fs::remove_file(&mine);
    let slot = taken.unwrap_or_else(|| panic!("no free topology slot in {SLOTS}: remove stale files there"));
    // Whatever a crashed owner of this slot left behind goes first.
    remove(&format!("aqt{slot}"));
    slot
}
