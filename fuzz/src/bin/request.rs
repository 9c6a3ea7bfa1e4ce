//! AFL++ entry point for [`nexusd_fuzz::request`].

fn main() {
    afl::fuzz!(|data: &[u8]| nexusd_fuzz::request(data));
}
