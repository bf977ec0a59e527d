//! Generated protobuf messages and gRPC stubs for every raftmq service.
//!
//! This crate holds generated code only; behaviour belongs in the crates that use it.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Version 1 of raftmq's wire protocol.
pub mod v1 {
    tonic::include_proto!("raftmq.v1");
}

pub use v1::*;

/// Apache RocketMQ 5's gRPC protocol (`apache.rocketmq.v2`), served for the official clients.
pub mod rocketmq {
    tonic::include_proto!("apache.rocketmq.v2");
}

/// The gRPC codec of every service here: prost's, except that a message is encoded into a buffer
/// grown once to its encoded length. tonic starts each answer's buffer at 8 KiB, and prost's
/// encoding grows it by doubling as it fills: a pull answer of 256 messages of 1 KiB was copied
/// into a new buffer six times on its way to about 270 KiB (3 % of a broker's CPU samples while
/// serving a backlog).
pub mod codec {
    use std::marker::PhantomData;

    use prost::Message;
    use tonic::codec::{EncodeBuf, Encoder};
    use tonic::Status;
    use tonic_prost::ProstDecoder;

    /// prost's codec with [`SizedEncoder`].
    #[derive(Debug, Clone)]
    pub struct SizedCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for SizedCodec<T, U> {
        fn default() -> Self {
            SizedCodec(PhantomData)
        }
    }

    impl<T, U> tonic::codec::Codec for SizedCodec<T, U>
    where
        T: Message + Send + 'static,
        U: Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = SizedEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            SizedEncoder(PhantomData)
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder::default()
        }
    }

    /// Reserves a message's encoded length before encoding it.
    #[derive(Debug, Clone)]
    pub struct SizedEncoder<T>(PhantomData<T>);

    impl<T: Message> Encoder for SizedEncoder<T> {
        type Item = T;
        type Error = Status;

        fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            // The length is computed once: `encode` would compute it again to check the room.
            buf.reserve(item.encoded_len());
            item.encode_raw(buf);
            Ok(())
        }
    }
}
