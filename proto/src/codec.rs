//! The codec of sup's own services: prost, with small per-stream buffers.
//!
//! tonic allocates each RPC's encode and decode buffers up front, 8 KiB each
//! by default, and a long-lived stream walks through the whole of its decode
//! buffer before reusing it, so all of it ends up resident. supd holds one
//! agent stream per node: at 16,384 nodes the defaults alone are 256 MiB
//! for messages that are a few hundred bytes (a telemetry report of eight
//! GPUs is about 300). The buffers still grow, 1 KiB at a time, for the rare
//! large message (a checkpoint catalog, a status answer).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size, and growth step, of a stream's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;
/// tonic's default: how much a server stream batches before it yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// `ProstCodec` with [`BUFFER_BYTES`] buffers (named in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
