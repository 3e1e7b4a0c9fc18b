//! One flow as the pair talks about it: who, through which VIP, to which
//! backend, from which NAT address and port, how long ago its last packet
//! was, and how far its TCP connection has got.
//!
//! This is the domain form. The XDP program's event and table layouts are
//! the tables' business; [`super::wire`] is the form on the wire.

use std::net::SocketAddrV4;

/// What a record says about its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The flow exists on the sender (new, refreshed, or listed by a bulk
    /// resync); its state is as given.
    Update,
    /// The sender saw the connection end (a FIN or a RST); its state says
    /// which. The receiver keeps the flow, closed, for the closed timeout
    /// and the NAT port hold, exactly as the sender does.
    Close,
}

/// How far a flow's TCP connection has got. Each fact is only ever set
/// while the connection lives: a sender's later record of the same
/// connection has every fact of an earlier one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowState {
    /// The three-way handshake completed (the backend's SYN-ACK was
    /// answered): not a half-open flow.
    pub established: bool,
    /// The client sent a FIN.
    pub fin_client: bool,
    /// The backend sent a FIN.
    pub fin_backend: bool,
    /// Either side sent a RST.
    pub rst: bool,
    /// The backend's FIN came before the client's: the backend may hold
    /// the tuple in TIME_WAIT, so the NAT port hold applies (as
    /// `CloseState::backend_first` in the tables). Only with `fin_backend`.
    pub backend_first: bool,
}

impl FlowState {
    /// The connection has ended: both FINs, or a RST (as
    /// `lb_ebpf::CloseState::closed`).
    pub const fn closed(&self) -> bool {
        self.rst || (self.fin_client && self.fin_backend)
    }

    /// Either side has begun to close it.
    pub const fn closing(&self) -> bool {
        self.rst || self.fin_client || self.fin_backend
    }
}

/// One flow, as the load balancer that forwards it sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowRecord {
    pub kind: RecordKind,
    /// The client's address and port (the flow's source).
    pub client: SocketAddrV4,
    /// The VIP and port the client connected to.
    pub vip: SocketAddrV4,
    /// The backend the flow is forwarded to.
    pub backend: SocketAddrV4,
    /// The NAT address and port the backend sees the flow come from.
    pub nat: SocketAddrV4,
    /// Milliseconds since the flow's last packet on the sender, when the
    /// record was made. Never an absolute time: the two hosts' clocks (and
    /// the XDP program's clock, which counts from boot) differ.
    pub age_ms: u32,
    pub state: FlowState,
}

/// A flow's identity: the client's connection to a VIP (always TCP).
pub type FlowKey = (SocketAddrV4, SocketAddrV4);

/// The identity of a flow's NAT entry: the backend and the NAT address and
/// port (what the backend's replies are addressed from and to).
pub type NatKey = (SocketAddrV4, SocketAddrV4);

impl FlowRecord {
    /// The flow's identity.
    pub fn key(&self) -> FlowKey {
        (self.client, self.vip)
    }

    /// Its NAT entry's identity.
    pub fn nat_key(&self) -> NatKey {
        (self.backend, self.nat)
    }
}
