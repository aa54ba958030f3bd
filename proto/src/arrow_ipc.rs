//! Tables on the wire: Arrow IPC stream bytes (a schema message, then record batches),
//! the encoding every `arrow_ipc` field of `ern.v1` carries.

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;

/// Encodes `batches` (all of `schema`) as one Arrow IPC stream. The schema travels even
/// with no batches, so an empty answer still has its columns.
pub fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut bytes = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut bytes, schema)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(bytes)
}

/// Decodes an Arrow IPC stream into its schema and batches.
///
/// The bytes come from another party (a node's answer, the coordinator's table), so the
/// lengths written in them are not trusted: the push decoder copies only bytes that are
/// there, where a reader would first allocate whatever length a message claims.
pub fn decode(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let mut decoder = StreamDecoder::new();
    let mut buffer = Buffer::from(bytes);
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        let before = buffer.len();
        if let Some(batch) = decoder.decode(&mut buffer)? {
            batches.push(batch);
        } else if buffer.len() == before {
            return Err(ArrowError::IpcError("the decoder made no progress".into()));
        }
    }
    decoder.finish()?;
    let schema = decoder
        .schema()
        .ok_or_else(|| ArrowError::IpcError("no schema in the stream".into()))?;
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn round_trips_tables_with_and_without_rows() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .expect("batch");
        let (decoded_schema, batches) =
            decode(&encode(&schema, std::slice::from_ref(&batch)).expect("encode"))
                .expect("decode");
        assert_eq!(decoded_schema, schema);
        assert_eq!(batches, vec![batch]);
        let (_, empty) = decode(&encode(&schema, &[]).expect("encode")).expect("decode");
        assert!(empty.is_empty());
    }

    #[test]
    fn garbage_and_lying_lengths_fail_fast() {
        // "not arrow" read as a length would claim half a gigabyte.
        assert!(decode(b"not arrow").is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2]).is_err());
        assert!(decode(b"").is_err());
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let bytes = encode(&schema, &[]).expect("encode");
        assert!(decode(&bytes[..bytes.len() / 2]).is_err(), "truncated");
    }
}
