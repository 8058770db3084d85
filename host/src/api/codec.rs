//! The codec of every Prism service: prost, except that a request which does
//! not decode (bad protobuf, a string that is not UTF-8) is answered
//! INVALID_ARGUMENT — tonic's default says INTERNAL, which at Prism means a
//! server bug or a trapped pattern. The message names the type, never the
//! request's bytes.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

#[derive(Debug, Clone)]
pub struct PrismCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for PrismCodec<T, U> {
    fn default() -> Self {
        PrismCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for PrismCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = PrismDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        PrismDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::default()))
    }
}

pub struct PrismDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for PrismDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            if status.code() == Code::Internal {
                Status::invalid_argument(format!(
                    "the request does not decode as {}: {}",
                    short_type_name::<U>(),
                    status.message()
                ))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `prism.v1.SetRequest` rather than the Rust path.
fn short_type_name<U>() -> String {
    let name = std::any::type_name::<U>();
    let short = name.rsplit("::").next().unwrap_or(name);
    format!("prism.v1.{short}")
}
