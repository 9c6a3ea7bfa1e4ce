//! AFL++ entry point for [`nexusd_fuzz::frame`].

fn main() {
    afl::fuzz!(|data: &[u8]| nexusd_fuzz::frame(data));
}
