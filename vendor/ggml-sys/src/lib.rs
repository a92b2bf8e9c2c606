//! The seam between dycoke and the ggml it is built on. This is the only crate that names the
//! registry crate that builds ggml (llama-cpp-sys-2, pinned); dycoke uses only what is re-exported
//! here, so a change of ggml source touches this file alone.
//!
//! libllama and the gguf reader are re-exported for tests and benchmarks, which use them as
//! independent references.

// ggml (tensors, graphs, ops)
pub use llama_cpp_sys_2::{
    GGML_LOG_LEVEL_CONT, GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_INFO, GGML_LOG_LEVEL_WARN,
    GGML_PREC_F32, GGML_SCALE_MODE_BICUBIC, GGML_SCALE_MODE_BILINEAR, GGML_SCALE_MODE_NEAREST,
    GGML_TYPE_COUNT, ggml_add, ggml_blck_size, ggml_build_forward_expand, ggml_cast, ggml_cgraph,
    ggml_concat, ggml_cont, ggml_cont_4d, ggml_context, ggml_cpy, ggml_custom_4d, ggml_custom_op_t,
    ggml_flash_attn_ext, ggml_free, ggml_gelu, ggml_gelu_erf, ggml_get_mem_size, ggml_get_rows,
    ggml_get_type_traits, ggml_graph_n_nodes, ggml_graph_overhead_custom, ggml_im2col, ggml_init,
    ggml_init_params, ggml_interpolate, ggml_is_contiguous, ggml_is_transposed, ggml_log_level,
    ggml_log_set, ggml_mul, ggml_mul_mat, ggml_nbytes, ggml_new_graph_custom, ggml_new_tensor,
    ggml_norm, ggml_permute, ggml_prec_set_acc, ggml_quantize_chunk, ggml_quantize_init,
    ggml_quantize_requires_imatrix, ggml_reshape_1d, ggml_reshape_2d, ggml_reshape_3d,
    ggml_reshape_4d, ggml_rms_norm, ggml_rope_ext, ggml_scale, ggml_set_input, ggml_set_name,
    ggml_set_output, ggml_set_rows, ggml_silu, ggml_soft_max_ext, ggml_swiglu_split, ggml_tanh,
    ggml_tensor, ggml_tensor_overhead, ggml_transpose, ggml_type_size, ggml_used_mem, ggml_view_1d,
    ggml_view_2d, ggml_view_3d, ggml_view_4d,
};

// ggml-backend
pub use llama_cpp_sys_2::{
    GGML_BACKEND_BUFFER_USAGE_WEIGHTS, GGML_BACKEND_DEVICE_TYPE_ACCEL, GGML_BACKEND_DEVICE_TYPE_CPU,
    GGML_BACKEND_DEVICE_TYPE_IGPU, GGML_STATUS_SUCCESS, ggml_backend,
    ggml_backend_alloc_ctx_tensors_from_buft, ggml_backend_buffer, ggml_backend_buffer_clear,
    ggml_backend_buffer_free, ggml_backend_buffer_get_base, ggml_backend_buffer_get_size,
    ggml_backend_buffer_name, ggml_backend_buffer_set_usage, ggml_backend_buffer_type_t,
    ggml_backend_buft_alloc_buffer, ggml_backend_buft_is_host, ggml_backend_buft_name,
    ggml_backend_cpu_buffer_from_ptr, ggml_backend_cpu_buffer_type, ggml_backend_cpu_set_n_threads,
    ggml_backend_cpu_set_threadpool, ggml_backend_dev_backend_reg, ggml_backend_dev_buffer_type,
    ggml_backend_dev_count, ggml_backend_dev_description, ggml_backend_dev_get,
    ggml_backend_dev_init, ggml_backend_dev_memory, ggml_backend_dev_name,
    ggml_backend_dev_supports_op, ggml_backend_dev_t, ggml_backend_dev_type, ggml_backend_free,
    ggml_backend_name, ggml_backend_reg_get_proc_address, ggml_backend_sched,
    ggml_backend_sched_alloc_graph, ggml_backend_sched_free, ggml_backend_sched_get_buffer_size,
    ggml_backend_sched_get_n_splits, ggml_backend_sched_graph_compute, ggml_backend_sched_new,
    ggml_backend_sched_reserve, ggml_backend_sched_reset, ggml_backend_sched_set_tensor_backend,
    ggml_backend_t, ggml_backend_tensor_alloc, ggml_backend_tensor_get, ggml_backend_tensor_set,
};

// ggml-cpu
pub use llama_cpp_sys_2::{
    ggml_cpu_has_arm_fma, ggml_cpu_has_avx, ggml_cpu_has_avx2, ggml_cpu_has_avx512,
    ggml_cpu_has_f16c, ggml_cpu_has_fma, ggml_cpu_has_neon, ggml_cpu_has_sse3, ggml_cpu_init,
    ggml_threadpool, ggml_threadpool_free, ggml_threadpool_new, ggml_threadpool_params_default,
};

// gguf (reference reader)
pub use llama_cpp_sys_2::{
    GGUF_TYPE_ARRAY, GGUF_TYPE_BOOL, GGUF_TYPE_FLOAT32, GGUF_TYPE_FLOAT64, GGUF_TYPE_INT16,
    GGUF_TYPE_INT32, GGUF_TYPE_INT64, GGUF_TYPE_INT8, GGUF_TYPE_STRING, GGUF_TYPE_UINT16,
    GGUF_TYPE_UINT32, GGUF_TYPE_UINT64, GGUF_TYPE_UINT8, gguf_free, gguf_get_alignment,
    gguf_get_arr_data, gguf_get_arr_n, gguf_get_arr_str, gguf_get_arr_type, gguf_get_data_offset,
    gguf_get_key, gguf_get_kv_type, gguf_get_n_kv, gguf_get_n_tensors, gguf_get_tensor_name,
    gguf_get_tensor_ne, gguf_get_tensor_offset, gguf_get_tensor_size, gguf_get_tensor_type,
    gguf_get_val_bool, gguf_get_val_f32, gguf_get_val_f64, gguf_get_val_i16, gguf_get_val_i32,
    gguf_get_val_i64, gguf_get_val_i8, gguf_get_val_str, gguf_get_val_u16, gguf_get_val_u32,
    gguf_get_val_u64, gguf_get_val_u8, gguf_get_version, gguf_init_from_file, gguf_init_params,
};

// libllama (reference engine)
pub use llama_cpp_sys_2::{
    LLAMA_FLASH_ATTN_TYPE_ENABLED, LLAMA_ROPE_TYPE_NEOX, llama_attach_threadpool,
    llama_backend_init, llama_batch_free, llama_batch_init, llama_context,
    llama_context_default_params, llama_decode, llama_free, llama_get_logits_ith, llama_get_memory,
    llama_init_from_model, llama_log_set, llama_memory_clear, llama_memory_seq_rm, llama_model,
    llama_model_default_params, llama_model_free, llama_model_get_vocab, llama_model_load_from_file,
    llama_token_to_piece, llama_tokenize, llama_vocab, llama_vocab_is_eog, llama_vocab_n_tokens,
};
