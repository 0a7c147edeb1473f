// The drop-in's per-step reads of its tensors, in C++ against the running torch.
//
// fusedopt.torch checks every tensor a multi-tensor step will touch before the
// first write: type, dtype, device, size, layout, its storage's bounds, its
// address, the step counts. Through torch's Python API those reads cost ~250 ns
// a tensor; here, on the at::Tensor behind each Python object, ~50 ns (most of it
// the memory it touches). This file is compiled at first use against the torch
// that is running (its ABI is that torch's own) by fusedopt/_torch_ext.py, which
// also documents the contract: `read` is the twin of fusedopt._overlap.tensor_plan's
// full plan (_tensor_plan, CPU tensors only), whose checks it mirrors one by one;
// it answers -1 wherever that plan answers None (so that the Python plan names the
// error), and in a few more cases that plan reads through Python (a torch function
// mode, a tensor subclass or non-leaf parameter, a params list subclass).

#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

namespace {

// an int64 array, C-contiguous (writable where asked), at least n long
struct Ints {
  Py_buffer view{};
  bool held = false;
  ~Ints() {
    if (held) PyBuffer_Release(&view);
  }
  bool take(PyObject* obj, Py_ssize_t n, const char* what, bool writable = true) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &view, flags) < 0) return false;
    held = true;
    const char* f = view.format;
    if (view.itemsize != 8 || view.len < n * 8 || !(strcmp(f, "l") == 0 || strcmp(f, "q") == 0)) {
      PyErr_Format(PyExc_ValueError, "read: %s must be an int64 array of at least %zd elements",
                   what, n);
      return false;
    }
    return true;
  }
  int64_t* data() { return static_cast<int64_t*>(view.buf); }
  Py_ssize_t size() const { return view.len / 8; }
};

// the byte ranges of a plan's first t rows are those of ``last`` (the arrays the
// last overlap sweep passed: table, counts, meta, steps, each t rows long): the
// same addresses, elements, kinds (meta's column 1) and step addresses
bool same_ranges(PyObject* last, Py_ssize_t t, const int64_t* tab, const int64_t* cnt,
                 const int64_t* met, const int64_t* stp) {
  if (!PyList_Check(last) || PyList_GET_SIZE(last) != 4) return false;
  Ints a[4];
  const Py_ssize_t widths[4] = {6, 1, 4, 1};
  for (int k = 0; k < 4; ++k) {
    if (!a[k].take(PyList_GET_ITEM(last, k), 0, "last", false)) {
      PyErr_Clear();
      return false;
    }
    if (a[k].size() != t * widths[k]) return false;
  }
  size_t row = static_cast<size_t>(t) * 8;
  if (memcmp(a[0].data(), tab, row * 6) || memcmp(a[1].data(), cnt, row) ||
      memcmp(a[3].data(), stp, row))
    return false;
  for (Py_ssize_t k = 0; k < t; ++k)
    if (a[2].data()[k * 4 + 1] != met[k * 4 + 1]) return false;
  return true;
}

struct Ref {  // a new reference, released at the end of its scope
  PyObject* obj;
  ~Ref() { Py_XDECREF(obj); }
};

struct Kind {  // a dtype the kernels step: its kernel kind and item size
  at::ScalarType dtype;
  int64_t kind, itemsize;
};

// the address of the elements of a tensor Dense passed (it has a storage), or 0
// where its storage no longer holds them (resized under it): the twin of
// _overlap._at
uintptr_t address(const at::Tensor& t, int64_t numel, int64_t itemsize) {
  if ((t.storage_offset() + numel) * itemsize > static_cast<int64_t>(t.storage().nbytes()))
    return 0;
  return reinterpret_cast<uintptr_t>(t.data_ptr());
}

// memory holding the values the tensor shows, which torch lets a step update in
// place (_overlap._plain)
bool plain(const at::Tensor& t) { return !(t.is_neg() || t.is_conj() || t.is_inference()); }

// a strided CPU tensor with a storage, whose memory holds the values it shows
// (plain). The layout and plain checks run in full once per dispatch key set met
// in a call: the key set is what torch derives both from (sparse and mkldnn
// layouts, conjugate and negative views, inference tensors), so another tensor
// with the same key set passes them for the same reasons.
struct Dense {
  c10::DispatchKeySet seen;
  bool any = false;
  bool operator()(const at::Tensor& t) {
    if (!t.has_storage() || !t.is_cpu()) return false;
    if (any && t.key_set() == seen) return true;
    if (t.layout() != at::kStrided || !plain(t)) return false;
    seen = t.key_set();
    any = true;
    return true;
  }
};

// a gradient or state tensor in its parameter's dtype, size and layout
bool like(const at::Tensor& t, const at::Tensor& p, bool contiguous, Dense& dense) {
  return dense(t) && t.scalar_type() == p.scalar_type() && t.sizes().equals(p.sizes()) &&
         (contiguous ? t.is_contiguous() : t.strides().equals(p.strides()));
}

// ``state``'s entries by the identity of their keys (a dict lookup would call
// Tensor.__hash__ in Python). Parameters are usually met in the order their
// entries were made: each lookup first tries the entry after the last one found,
// then a binary search of the entries sorted by key (sorted at the first miss).
struct Entries {
  std::vector<std::pair<PyObject*, PyObject*>> items;  // dict order
  std::vector<std::pair<PyObject*, size_t>> sorted;    // (key, its index in items)
  size_t next = 0;
  explicit Entries(PyObject* state) {  // (each key and value held)
    items.reserve(static_cast<size_t>(PyDict_GET_SIZE(state)));
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(state, &pos, &key, &value)) {
      Py_INCREF(key);
      Py_INCREF(value);
      items.emplace_back(key, value);
    }
  }
  ~Entries() {
    for (auto& item : items) {
      Py_DECREF(item.first);
      Py_DECREF(item.second);
    }
  }
  Entries(const Entries&) = delete;
  Entries& operator=(const Entries&) = delete;
  PyObject* find(PyObject* key) {
    if (next < items.size() && items[next].first == key) return items[next++].second;
    if (sorted.empty()) {
      sorted.reserve(items.size());
      for (size_t k = 0; k < items.size(); ++k) sorted.emplace_back(items[k].first, k);
      std::sort(sorted.begin(), sorted.end());
    }
    auto at = std::lower_bound(sorted.begin(), sorted.end(), std::make_pair(key, size_t{0}));
    if (at == sorted.end() || at->first != key) return nullptr;
    next = at->second + 1;
    return items[at->second].second;
  }
};

// a dict whose keys are all exact str: a lookup of a str in it runs no Python code
bool str_keys(PyObject* dict) {
  Py_ssize_t pos = 0;
  PyObject *key, *value;
  while (PyDict_Next(dict, &pos, &key, &value))
    if (!PyUnicode_CheckExact(key)) return false;
  return true;
}

// no garbage collection while it lives (the state it found restored after): a
// collection runs finalizers, Python code that could edit the tensors being read
struct NoCollection {
  int was = PyGC_Disable();
  ~NoCollection() {
    if (was) PyGC_Enable();
  }
};

void release_pins(PyObject* capsule) {
  delete static_cast<std::vector<c10::Storage>*>(PyCapsule_GetPointer(capsule, "pins"));
}

// the plan; -1 off the common case, -2 with a Python error set. No Python code
// runs while it reads: no collection (NoCollection), no torch function mode, only
// exact Tensor and Parameter objects and leaf parameters (whose p.grad is read in
// C, without the warning a non-leaf's raises), state dicts with str keys only. So
// every address it takes is that of the storage it found; it holds those storages
// (a capsule in keep) until the caller lets keep go: a tensor re-pointed before the
// kernels run (by a finalizer, another thread) leaves them alive.
Py_ssize_t plan(PyObject* groups, PyObject* state, PyObject* kinds, PyObject* types,
                bool has_step, double max_step, int64_t* tab, int64_t* cnt, int64_t* met,
                int64_t* ind, int64_t* stp, Py_ssize_t total, PyObject* keep) {
  static PyObject* grad_name = PyUnicode_InternFromString("grad");
  static PyObject* step_name = PyUnicode_InternFromString("step");
  if (!grad_name || !step_name) return -2;
  // under a torch function mode every read the Python-API plan makes goes through
  // the mode: that plan decides then
  if (at::impl::torch_function_mode_enabled()) return -1;
  if (!PyTuple_Check(types) || PyTuple_GET_SIZE(types) != 2 || !PyDict_Check(kinds) ||
      !PyDict_Check(state) || !PyList_CheckExact(groups))
    return -1;
  NoCollection no_collection;
  PyTypeObject* tensor = reinterpret_cast<PyTypeObject*>(PyTuple_GET_ITEM(types, 0));
  PyTypeObject* parameter = reinterpret_cast<PyTypeObject*>(PyTuple_GET_ITEM(types, 1));
  std::vector<Kind> known;
  Py_ssize_t pos = 0;
  PyObject *key, *value;
  while (PyDict_Next(kinds, &pos, &key, &value)) {
    if (!THPDtype_Check(key) || !PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 2)
      return -1;
    int64_t kind = PyLong_AsLongLong(PyTuple_GET_ITEM(value, 0));
    int64_t itemsize = PyLong_AsLongLong(PyTuple_GET_ITEM(value, 1));
    if (PyErr_Occurred()) return -2;
    known.push_back({reinterpret_cast<THPDtype*>(key)->scalar_type, kind, itemsize});
  }
  Entries entries(state);
  Dense dense;
  auto pins = std::make_unique<std::vector<c10::Storage>>();
  pins->reserve(static_cast<size_t>(total) * 5);
  Py_ssize_t t = 0, index = 0;
  for (Py_ssize_t k = 0; k < PyList_GET_SIZE(groups); ++k) {
    PyObject* group = PyList_GET_ITEM(groups, k);
    if (!PyTuple_Check(group) || PyTuple_GET_SIZE(group) != 2) return -1;
    PyObject* params = PyTuple_GET_ITEM(group, 0);
    PyObject* columns = PyTuple_GET_ITEM(group, 1);
    if (!PyList_CheckExact(params) || !PyTuple_Check(columns)) return -1;
    for (Py_ssize_t c = 0; c < PyTuple_GET_SIZE(columns); ++c) {
      PyObject* column = PyTuple_GET_ITEM(columns, c);
      if (!PyTuple_Check(column) || PyTuple_GET_SIZE(column) != 2 ||
          !PyUnicode_CheckExact(PyTuple_GET_ITEM(column, 0)))
        return -1;
      long col = PyLong_AsLong(PyTuple_GET_ITEM(column, 1));
      if (col < 2 || col > 5) return PyErr_Occurred() ? -2 : -1;
    }
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(params); ++j) {
      PyObject* p = PyList_GET_ITEM(params, j);
      if (Py_TYPE(p) != tensor && Py_TYPE(p) != parameter) return -1;
      const at::Tensor& pt = THPVariable_Unpack(p);
      if (!pt.is_leaf()) return -1;
      Ref grad{PyObject_GetAttr(p, grad_name)};
      PyObject* g = grad.obj;
      if (g == nullptr) return -2;
      if (g == Py_None) {
        ++index;
        continue;
      }
      if (t >= total || Py_TYPE(g) != tensor) return -1;
      // (every object read is held, by keep, until the caller lets it go)
      if (PyList_Append(keep, p) < 0 || PyList_Append(keep, g) < 0) return -2;
      const at::Tensor& gt = THPVariable_Unpack(g);
      if (!dense(pt)) return -1;
      const Kind* kind = nullptr;
      for (const Kind& kn : known)
        if (kn.dtype == pt.scalar_type()) kind = &kn;
      if (kind == nullptr) return -1;
      // contiguous, or dense in another order of dimensions (channels_last,
      // transposed) with its gradient and state in the very same strides
      // (at most 16 dimensions then, as _dense_strides)
      bool contiguous = pt.is_contiguous();
      if (!contiguous && (pt.dim() > 16 || !pt.is_non_overlapping_and_dense())) return -1;
      if (!like(gt, pt, contiguous, dense)) return -1;
      PyObject* live = entries.find(p);
      if (live == nullptr || !PyDict_CheckExact(live) || !str_keys(live)) return -1;
      int64_t numel = pt.numel();
      int64_t* row = tab + t * 6;
      row[0] = static_cast<int64_t>(address(pt, numel, kind->itemsize));
      row[1] = static_cast<int64_t>(address(gt, numel, kind->itemsize));
      if (numel && !(row[0] && row[1])) return -1;
      pins->push_back(pt.storage());
      pins->push_back(gt.storage());
      for (Py_ssize_t c = 0; c < PyTuple_GET_SIZE(columns); ++c) {
        PyObject* column = PyTuple_GET_ITEM(columns, c);
        PyObject* obj = PyDict_GetItemWithError(live, PyTuple_GET_ITEM(column, 0));
        if (obj == nullptr) return PyErr_Occurred() ? -2 : -1;
        if (Py_TYPE(obj) != tensor) return -1;
        if (PyList_Append(keep, obj) < 0) return -2;
        const at::Tensor& st = THPVariable_Unpack(obj);
        if (!like(st, pt, contiguous, dense)) return -1;
        int64_t* slot = row + PyLong_AsLong(PyTuple_GET_ITEM(column, 1));
        *slot = static_cast<int64_t>(address(st, numel, kind->itemsize));
        if (numel && !*slot) return -1;
        pins->push_back(st.storage());
      }
      int64_t step = 0;
      if (has_step) {
        PyObject* obj = PyDict_GetItemWithError(live, step_name);
        if (obj == nullptr) return PyErr_Occurred() ? -2 : -1;
        if (Py_TYPE(obj) != tensor) return -1;
        if (PyList_Append(keep, obj) < 0) return -2;
        const at::Tensor& st = THPVariable_Unpack(obj);
        if (!dense(st) || st.scalar_type() != at::kFloat || st.numel() != 1) return -1;
        // a whole number in [0, max_step] (_overlap._count)
        uintptr_t addr = address(st, 1, 4);
        if (addr == 0) return -1;
        double count = *reinterpret_cast<const float*>(addr);
        if (!(0 <= count && count <= max_step) ||
            count != static_cast<double>(static_cast<int64_t>(count)))
          return -1;
        step = static_cast<int64_t>(count);
        stp[t] = static_cast<int64_t>(addr);
        pins->push_back(st.storage());
      }
      cnt[t] = numel;
      met[t * 4 + 0] = k;
      met[t * 4 + 1] = kind->kind;
      met[t * 4 + 2] = step;
      met[t * 4 + 3] = 0;
      ind[t] = index;
      ++t;
      ++index;
    }
  }
  if (index != total) return -1;
  PyObject* capsule = PyCapsule_New(pins.get(), "pins", release_pins);
  if (capsule == nullptr) return -2;
  pins.release();
  int appended = PyList_Append(keep, capsule);
  Py_DECREF(capsule);
  return appended < 0 ? -2 : t;
}

PyObject* read(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 13) {
    PyErr_Format(PyExc_TypeError, "read: 13 arguments expected, got %zd", nargs);
    return nullptr;
  }
  int has_step = PyObject_IsTrue(args[4]);
  double max_step = PyFloat_AsDouble(args[5]);
  if (has_step < 0 || PyErr_Occurred()) return nullptr;
  Py_ssize_t total = PyObject_Length(args[7]);  // (the length of counts)
  if (total < 0 || !PyList_Check(args[11])) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "read: keep must be a list");
    return nullptr;
  }
  Ints tab, cnt, met, ind, stp;
  if (!tab.take(args[6], total * 6, "table") || !cnt.take(args[7], total, "counts") ||
      !met.take(args[8], total * 4, "meta") || !ind.take(args[9], total, "indices") ||
      !stp.take(args[10], total, "steps"))
    return nullptr;
  Py_ssize_t t;
  try {
    t = plan(args[0], args[1], args[2], args[3], has_step != 0, max_step, tab.data(),
             cnt.data(), met.data(), ind.data(), stp.data(), total, args[11]);
  } catch (...) {  // torch raised on a read: not the common case
    t = -1;
  }
  if (t == -2 && PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
    return nullptr;  // (KeyboardInterrupt, SystemExit: not this plan's to swallow)
  PyErr_Clear();  // (-2: a Python error, which the Python plan meets and names)
  if (t < 0) return Py_BuildValue("(nO)", Py_ssize_t{-1}, Py_False);
  bool same = same_ranges(args[12], t, tab.data(), cnt.data(), met.data(), stp.data());
  return Py_BuildValue("(nO)", t, same ? Py_True : Py_False);
}

PyMethodDef methods[] = {
    {"read", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(read)),
     METH_FASTCALL,
     "read(groups, state, kinds, types, has_step, max_step, table, counts, meta, indices, "
     "steps, keep, last) -> (rows planned or -1 off the common case, whether their byte "
     "ranges are those of last)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "fusedopt_tensor_plan", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_fusedopt_tensor_plan() { return PyModule_Create(&module); }
