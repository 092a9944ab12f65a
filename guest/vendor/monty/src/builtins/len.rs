//! Implementation of the len() builtin function.

use crate::{
    args::ArgValues,
    bytecode::VM,
    defer_drop,
    exception_private::{ExcType, ExcTypeExt, RunResult, SimpleException},
    heap::HeapData,
    types::PyTrait,
    value::Value,
};

/// Implementation of the len() builtin function.
///
/// Returns the length of an object (number of items in a container).
pub fn builtin_len(vm: &mut VM<'_>, args: ArgValues) -> RunResult<Value> {
    let value = args.get_one_arg("len", vm.heap)?;
    defer_drop!(value, vm);
    // A range's length is computed in i128: `py_len` returns `usize`, which saturates
    // at 2**32 - 1 on 32-bit targets (wasm32), where `len(range(10**18))` would lie.
    if let Value::Ref(id) = value
        && let HeapData::Range(range) = vm.heap.get(*id)
    {
        return i64::try_from(range.len_i128())
            .map(Value::Int)
            .map_err(|_| ExcType::overflow_c_ssize_t());
    }
    if let Some(len) = value.py_len(vm) {
        Ok(Value::Int(
            i64::try_from(len).map_err(|_| ExcType::overflow_c_ssize_t())?,
        ))
    } else {
        let type_name = value.py_type_name(vm);
        Err(SimpleException::new_msg(ExcType::TypeError, format!("object of type '{type_name}' has no len()")).into())
    }
}
