//! Argument structs of the QMP commands other than `netdev_add`, declared as in the
//! schema so that they are checked by the same visitor (missing, unexpected and wrongly
//! typed members are reported with QEMU's words).

use super::define::qapi_struct;

qapi_struct! {
    /// `set_link`.
    pub struct SetLinkArgs {
        /// the device name of the virtual network adapter
        name: req str = "name",
        /// true to set the link status to be up
        up: req bool = "up",
    }
}

qapi_struct! {
    /// `netdev_del`.
    pub struct NetdevDelArgs {
        /// the name of the network backend to remove
        id: req str = "id",
    }
}

qapi_struct! {
    /// `query-rx-filter`.
    pub struct QueryRxFilterArgs {
        /// net client name
        name: opt str = "name",
    }
}

qapi_struct! {
    /// `announce-self`: AnnounceParameters.
    pub struct AnnounceParameters {
        /// Initial delay (in ms) before sending the first GARP/RARP announcement
        initial: req int = "initial",
        /// Maximum delay (in ms) between GARP/RARP announcement packets
        max: req int = "max",
        /// Number of self-announcement attempts
        rounds: req int = "rounds",
        /// Delay increase (in ms) after each self-announcement attempt
        step: req int = "step",
        /// An optional list of interface names, which restrict the announcement to the
        /// listed interfaces
        interfaces: opt StrList = "interfaces",
        /// A name to be used to identify an instance of announce-timers
        id: opt str = "id",
    }
}

qapi_struct! {
    /// `getfd`.
    pub struct GetfdArgs {
        /// file descriptor name
        fdname: req str = "fdname",
    }
}

qapi_struct! {
    /// `human-monitor-command`.
    pub struct HmpArgs {
        /// the command to execute in the human monitor
        command_line: req str = "command-line",
        /// The CPU to use for commands that require an implicit CPU
        cpu_index: opt int = "cpu-index",
    }
}

qapi_struct! {
    /// `qmp_capabilities`.
    pub struct CapabilitiesArgs {
        /// capabilities to enable
        enable: opt StrList = "enable",
    }
}

qapi_struct! {
    /// `x-netdev-capture` (pollswitch extension): start or stop writing one port's
    /// frames to a pcapng or pcap file.
    pub struct NetdevCaptureArgs {
        /// the netdev (a port)
        name: req str = "name",
        /// the file (required to start)
        file: opt str = "file",
        /// stop the capture running on the port
        stop: opt bool = "stop",
        /// rx, tx or both (default)
        direction: opt str = "direction",
        /// bytes kept of each frame (default 65535)
        snaplen: opt uint32 = "snaplen",
        /// start the next file past this many bytes (default: never)
        max_size: opt uint64 = "max-size",
        /// files kept when rotating (default 2)
        max_files: opt uint32 = "max-files",
        /// pcapng (default) or pcap
        format: opt str = "format",
    }
}

qapi_struct! {
    /// `x-query-fdb` (pollswitch extension): the learned addresses of one learning hub,
    /// or of all.
    pub struct QueryFdbArgs {
        /// the hub (default: every learning hub)
        hubid: opt int32 = "hubid",
    }
}

qapi_struct! {
    /// `x-set-vlan` (pollswitch extension): a hubport's VLAN settings, changed while
    /// traffic flows; neither member: no VLAN settings.
    pub struct SetVlanArgs {
        /// the hubport
        name: req str = "name",
        /// its access VLAN (with `trunks`: its native VLAN)
        vlan: opt uint16 = "vlan",
        /// the VLANs it carries tagged, such as 10:20-29
        trunks: opt str = "trunks",
    }
}

qapi_struct! {
    /// `x-fdb-flush` (pollswitch extension): forget a learning hub's addresses, or those
    /// of one of its ports.
    pub struct FdbFlushArgs {
        /// the hub
        hubid: req int32 = "hubid",
        /// only this netdev's addresses
        port: opt str = "port",
    }
}

qapi_struct! {
    /// `x-set-rx-filter` (pollswitch extension): what a NIC's application would set
    /// through its control channel. Members left out keep their value.
    pub struct SetRxFilterArgs {
        /// the NIC
        name: req str = "name",
        /// receive everything
        promiscuous: opt bool = "promiscuous",
        /// multicast state: normal, none or all
        multicast: opt str = "multicast",
        /// unicast state: normal, none or all
        unicast: opt str = "unicast",
        /// vlan state: normal, none or all
        vlan: opt str = "vlan",
        /// accept broadcast frames
        broadcast_allowed: opt bool = "broadcast-allowed",
        /// the main MAC address
        main_mac: opt str = "main-mac",
        /// accepted VLAN ids
        vlan_table: opt IntList = "vlan-table",
        /// extra unicast addresses
        unicast_table: opt StrList = "unicast-table",
        /// multicast addresses
        multicast_table: opt StrList = "multicast-table",
    }
}
