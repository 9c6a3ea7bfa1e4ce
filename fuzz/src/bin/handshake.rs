//! AFL++ entry point for [`nexusd_fuzz::handshake`].

fn main() {
    afl::fuzz!(|data: &[u8]| nexusd_fuzz::handshake(data));
}
