//! Fuel for bulk memory operations in Winch's code, charged as Cranelift's code does.
//!
//! Cranelift's code charges `memory.copy` and `memory.fill` one unit of fuel per byte
//! besides their flat cost; Winch's charges only the flat cost. Both guests use them
//! (the Rust in them lowers `memcpy` and `memset` to them: hundreds of sites in the
//! JavaScript guest, thousands in Monty), and without the charge a loop that copies a
//! large string would do a copy of the whole memory for a few units of fuel, so the
//! fuel limit would no longer bound the work. So the module Winch compiles has each of
//! them replaced by a call to a function of its own that first charges the bytes
//! through [`IMPORT`] (which stops the execution, out of fuel, when they are more than
//! it has left) and then does the operation.
//!
//! The rewrite adds one imported function, so every defined function's index moves
//! up by one (calls, exports, elements and `ref.func` are renumbered alike), and two
//! defined functions after the others. Types, memories, tables, globals and data are
//! unchanged, so the memory and table layouts, and with them a session's memory or a
//! paused execution's, are the same as the original's.

use wasm_encoder::reencode::{utils, Error as ReencodeError, Reencode};
use wasm_encoder::{
    CodeSection, EntityType, Function, FunctionSection, ImportSection, Instruction, TypeSection, ValType,
};
use wasmparser::{Operator, Parser, Payload, TypeRef};
use wasmtime::{Caller, Linker, Trap};

/// The host function that charges bytes: `(module, name)`, taking the byte count
/// (`i32`, unsigned).
pub const IMPORT: (&str, &str) = ("sandgate_meter", "bytes");

/// The fuel the rewrite itself costs at each bulk operation, over the operation's
/// own unit: the call in its place, the added function's entry, its four
/// `local.get`s and its call to [`IMPORT`] (wasmtime's default costs: one for each
/// operator but `end`, and one for entering a function). [`IMPORT`] gives it back, so
/// an execution uses the same fuel on both compilers' code.
const REWRITE_COST: u64 = 7;

/// Defines [`IMPORT`]: takes the bytes from the execution's fuel, or ends it out of
/// fuel when it has fewer left (as Cranelift's code does at a bulk operation).
pub fn add_to_linker<T: 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.func_wrap(IMPORT.0, IMPORT.1, |mut caller: Caller<'_, T>, bytes: i32| -> wasmtime::Result<()> {
        let bytes = u64::from(bytes as u32);
        let left = caller.get_fuel()? + REWRITE_COST;
        if bytes > left {
            caller.set_fuel(0)?;
            return Err(Trap::OutOfFuel.into());
        }
        caller.set_fuel(left - bytes)
    })?;
    Ok(())
}

/// `wasm` with its `memory.copy` and `memory.fill` charged by the byte (see the
/// module's documentation).
pub fn metered(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut imported, mut defined, mut types) = (0u32, 0u32, 0u32);
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    types += group?.types().len() as u32;
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    imported += u32::from(matches!(import?.ty, TypeRef::Func(_)));
                }
            }
            Payload::FunctionSection(reader) => defined = reader.count(),
            _ => {}
        }
    }
    let mut rewrite = Rewrite {
        imported,
        charge_type: types,
        bulk_type: types + 1,
        copy: imported + 1 + defined,
        fill: imported + 1 + defined + 1,
    };
    let mut module = wasm_encoder::Module::new();
    rewrite
        .parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| anyhow::anyhow!("cannot meter the guest's bulk memory operations: {e:?}"))?;
    Ok(module.finish())
}

struct Rewrite {
    /// Functions the original imports: indices below stay, the others move up by one.
    imported: u32,
    /// The added types: `(i32) -> ()` and `(i32, i32, i32) -> ()`.
    charge_type: u32,
    bulk_type: u32,
    /// The added functions doing a charged `memory.copy` and `memory.fill`.
    copy: u32,
    fill: u32,
}

type Result<T> = std::result::Result<T, ReencodeError<std::convert::Infallible>>;

impl Reencode for Rewrite {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32> {
        Ok(if func < self.imported { func } else { func + 1 })
    }

    fn instruction<'a>(&mut self, op: Operator<'a>) -> Result<Instruction<'a>> {
        Ok(match op {
            Operator::MemoryCopy { dst_mem: 0, src_mem: 0 } => Instruction::Call(self.copy),
            Operator::MemoryFill { mem: 0 } => Instruction::Call(self.fill),
            op => return utils::instruction(self, op),
        })
    }

    fn parse_type_section(
        &mut self,
        types: &mut TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<()> {
        utils::parse_type_section(self, types, section)?;
        types.ty().function([ValType::I32], []);
        types.ty().function([ValType::I32, ValType::I32, ValType::I32], []);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<()> {
        utils::parse_import_section(self, imports, section)?;
        imports.import(IMPORT.0, IMPORT.1, EntityType::Function(self.charge_type));
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<()> {
        utils::parse_function_section(self, functions, section)?;
        functions.function(self.bulk_type).function(self.bulk_type);
        Ok(())
    }

    fn parse_code_section(&mut self, code: &mut CodeSection, section: wasmparser::CodeSectionReader<'_>) -> Result<()> {
        utils::parse_code_section(self, code, section)?;
        // (destination, source or value, length): charge the length, then do it.
        for operation in [Instruction::MemoryCopy { src_mem: 0, dst_mem: 0 }, Instruction::MemoryFill(0)] {
            let mut function = Function::new([]);
            function
                .instruction(&Instruction::LocalGet(2))
                .instruction(&Instruction::Call(self.imported))
                .instruction(&Instruction::LocalGet(0))
                .instruction(&Instruction::LocalGet(1))
                .instruction(&Instruction::LocalGet(2))
                .instruction(&operation)
                .instruction(&Instruction::End);
            code.function(&function);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_operations_become_calls_and_indices_move_past_the_added_import() {
        let wasm = wat_module();
        let metered = metered(&wasm).unwrap();
        wasmparser::Validator::new().validate_all(&metered).expect("the rewritten module is valid");
        let (mut imports, mut bulk, mut calls) = (Vec::new(), 0, Vec::new());
        for payload in Parser::new(0).parse_all(&metered) {
            match payload.unwrap() {
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.unwrap();
                        imports.push(format!("{}.{}", import.module, import.name));
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let mut ops = body.get_operators_reader().unwrap();
                    while !ops.eof() {
                        match ops.read().unwrap() {
                            Operator::MemoryCopy { .. } | Operator::MemoryFill { .. } => bulk += 1,
                            Operator::Call { function_index } => calls.push(function_index),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!(imports, ["host.f", "sandgate_meter.bytes"]);
        // Only the two added functions do bulk operations; the original's call to
        // itself (defined function 1, now 2) and to the import (0) are renumbered, and
        // its copy and fill call the added functions (3 and 4), which call the charge (1).
        assert_eq!(bulk, 2);
        assert_eq!(calls, [0, 2, 3, 4, 1, 1]);
    }

    /// (import "host" "f"); func 1: call 0, call 1, memory.copy, memory.fill.
    fn wat_module() -> Vec<u8> {
        let mut module = wasm_encoder::Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        module.section(&types);
        let mut imports = ImportSection::new();
        imports.import("host", "f", EntityType::Function(0));
        module.section(&imports);
        let mut functions = FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut memories = wasm_encoder::MemorySection::new();
        memories.memory(wasm_encoder::MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        let mut code = CodeSection::new();
        let mut body = Function::new([]);
        body.instruction(&Instruction::Call(0)).instruction(&Instruction::Call(1));
        for _ in 0..3 {
            body.instruction(&Instruction::I32Const(0));
        }
        body.instruction(&Instruction::MemoryCopy { src_mem: 0, dst_mem: 0 });
        for _ in 0..3 {
            body.instruction(&Instruction::I32Const(0));
        }
        body.instruction(&Instruction::MemoryFill(0)).instruction(&Instruction::End);
        code.function(&body);
        module.section(&code);
        module.finish()
    }
}
