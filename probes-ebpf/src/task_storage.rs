//! `BPF_MAP_TYPE_TASK_STORAGE`: a value per task, found from the task
//! itself (a pointer in `task_struct`), with no shared hash table to fill.
//!
//! aya-ebpf 0.3 has BTF map types for inode, socket and cgroup storage but
//! none for task storage, so this declares one the same way: a BTF map
//! definition in `.maps` (the kernel needs the value's BTF for local
//! storage), and the two helpers it takes. Task storage helpers are
//! available to kprobe, fentry and raw tracepoint programs (Linux >= 5.11;
//! `bpf_tracing_func_proto`).

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, task_struct, BPF_F_NO_PREALLOC},
    helpers::generated::bpf_task_storage_get,
};

/// `BPF_LOCAL_STORAGE_GET_F_CREATE`.
const F_CREATE: u64 = 1;

/// The libbpf layout of a BTF map definition: each member's pointee or
/// array length carries a number (the kernel reads them from BTF).
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the members are placeholders the loader reads from BTF; they are
// never dereferenced, so sharing the static between programs is sound.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> TaskStorage<T> {
        TaskStorage {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    #[inline(always)]
    fn get_with(&self, task: *mut task_struct, flags: u64) -> Option<*mut T> {
        // SAFETY: the helper takes this map and a task, which the verifier
        // checks (a BTF pointer to `task_struct`, `bpf_get_current_task_btf`'s);
        // a NULL value asks for a zeroed one on create.
        let value = unsafe {
            bpf_task_storage_get(
                ptr::from_ref(self).cast_mut().cast::<c_void>(),
                task,
                ptr::null_mut(),
                flags,
            )
        };
        (!value.is_null()).then_some(value.cast::<T>())
    }

    /// `task`'s value, zeroed on first use; `None` if none could be made
    /// (out of memory, or the storage busy on this CPU).
    #[inline(always)]
    pub fn get_or_create(&self, task: *mut task_struct) -> Option<*mut T> {
        self.get_with(task, F_CREATE)
    }

    /// `task`'s value, if it has one.
    #[inline(always)]
    pub fn get(&self, task: *mut task_struct) -> Option<*mut T> {
        self.get_with(task, 0)
    }
}
