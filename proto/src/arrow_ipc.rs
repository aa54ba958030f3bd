//! Tables on the wire: Arrow IPC stream bytes (a schema message, then record batches),
//! the encoding every `arrow_ipc` field of `ern.v1` carries.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
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
pub fn decode(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let reader = StreamReader::try_new(bytes, None)?;
    let schema = Arc::clone(&reader.schema());
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}
