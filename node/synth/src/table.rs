//! Column buffers of one synthetic site and their CSV files, written by polars.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use polars::prelude::{Column, CsvWriter, DataFrame, SerWriter};

use super::SynthError;
use ern_ingest::export::ExportFile;

/// The cells of one export file, column by column in spec order.
#[derive(Debug)]
pub(crate) struct CsvTable {
    file: ExportFile,
    columns: Vec<Vec<Option<String>>>,
}

impl CsvTable {
    fn new(file: ExportFile) -> Self {
        CsvTable {
            file,
            columns: vec![Vec::new(); file.columns().len()],
        }
    }

    /// Appends one row; `row` has one cell per spec column, in spec order.
    pub(crate) fn push<const N: usize>(&mut self, row: [Option<String>; N]) {
        debug_assert_eq!(N, self.columns.len(), "{}", self.file.file_name());
        for (column, cell) in self.columns.iter_mut().zip(row) {
            column.push(cell);
        }
    }

    fn rows(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }

    fn write(self, dir: &Path) -> Result<usize, SynthError> {
        let path = dir.join(self.file.file_name());
        let rows = self.rows();
        let columns: Vec<Column> = self
            .file
            .columns()
            .iter()
            .zip(self.columns)
            .map(|(spec, cells)| Column::new(spec.name.into(), cells))
            .collect();
        let polars_error = |e: polars::prelude::PolarsError| SynthError::Write {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut frame = DataFrame::new(rows, columns).map_err(polars_error)?;
        let file = File::create(&path).map_err(|source| SynthError::Io {
            path: path.clone(),
            source,
        })?;
        CsvWriter::new(BufWriter::new(file))
            .include_header(true)
            .finish(&mut frame)
            .map_err(polars_error)?;
        Ok(rows)
    }
}

/// The four files of one site.
#[derive(Debug)]
pub(crate) struct SiteTables {
    pub(crate) patient: CsvTable,
    pub(crate) diagnosis: CsvTable,
    pub(crate) genetic_finding: CsvTable,
    pub(crate) phenotype: CsvTable,
}

impl SiteTables {
    pub(crate) fn new() -> Self {
        SiteTables {
            patient: CsvTable::new(ExportFile::Patient),
            diagnosis: CsvTable::new(ExportFile::Diagnosis),
            genetic_finding: CsvTable::new(ExportFile::GeneticFinding),
            phenotype: CsvTable::new(ExportFile::Phenotype),
        }
    }

    /// Writes the four CSV files into `dir` (created if needed); returns rows per file.
    pub(crate) fn write(self, dir: &Path) -> Result<[usize; 4], SynthError> {
        std::fs::create_dir_all(dir).map_err(|source| SynthError::Io {
            path: dir.into(),
            source,
        })?;
        Ok([
            self.patient.write(dir)?,
            self.diagnosis.write(dir)?,
            self.genetic_finding.write(dir)?,
            self.phenotype.write(dir)?,
        ])
    }
}
