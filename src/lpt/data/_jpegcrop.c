/* lpt.data._jpegcrop: the pixels of one region of a JPEG, decoded by libjpeg-turbo's partial decompression.
 *
 * Why C: a RandomResizedCrop box needs only the rows down to its bottom and only its own columns, but every Python
 * binding of libjpeg-turbo (Pillow, simplejpeg, PyTurboJPEG on TurboJPEG 2.x, torchvision, OpenCV, imagecodecs)
 * decodes whole images. libjpeg-turbo's own API can skip the inverse DCT and colour conversion above the region
 * (jpeg_skip_scanlines), work on the region's columns only (jpeg_crop_scanline) and stop entropy decoding below it;
 * on large, detailed JPEGs that is a third of the decode time (README, Performance). The region's pixels are the
 * whole decode's, bit for bit (tests/test_decode.py): the decoded area reaches MARGIN pixels past the region on
 * every side, so chroma upsampling at its edges sees the same neighbours.
 *
 * decode_region(data, out, reduction, top, left, height, width): decode ``data`` at DCT scale 1/reduction
 * (1, 2, 4 or 8) and write the RGB pixels of rows top..top+height-1, columns left..left+width-1 of that scaled
 * image into ``out``, a writable buffer of height * width * 3 bytes. Raises ValueError where libjpeg finds the
 * data corrupt, where it only warns too (as simplejpeg's strict mode does), or where the region lies outside the
 * image. The GIL is released while decoding.
 */
#define PY_SSIZE_T_CLEAN
#define Py_LIMITED_API 0x030B0000  /* the stable ABI of Python 3.11: one build serves every later Python */
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>

#ifndef LIBJPEG_TURBO_VERSION
#error "lpt.data._jpegcrop needs libjpeg-turbo (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

#define MARGIN 1

struct strict_errors {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
};

static void fail(j_common_ptr cinfo) {
    struct strict_errors *err = (struct strict_errors *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->escape, 1);
}

static void warn_as_error(j_common_ptr cinfo, int level) {
    if (level < 0) fail(cinfo);  /* a warning: corrupt or truncated data */
}

struct region { int reduction, top, left, height, width; };

/* 0 on success; otherwise err->message says why. */
static int decode(const unsigned char *data, size_t size, unsigned char *out, struct region r,
                  struct strict_errors *err) {
    struct jpeg_decompress_struct cinfo;
    cinfo.err = jpeg_std_error(&err->pub);
    err->pub.error_exit = fail;
    err->pub.emit_message = warn_as_error;
    if (setjmp(err->escape)) {
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (unsigned char *)data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)r.reduction;
    jpeg_start_decompress(&cinfo);
    int width = (int)cinfo.output_width, height = (int)cinfo.output_height;
    if (r.top > height - r.height || r.left > width - r.width) {  /* no int overflow: all are non-negative */
        snprintf(err->message, JMSG_LENGTH_MAX, "region rows %d..%lld, columns %d..%lld outside the %d x %d image",
                 r.top, (long long)r.top + r.height - 1, r.left, (long long)r.left + r.width - 1, height, width);
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    int x0 = r.left > MARGIN ? r.left - MARGIN : 0;
    int x1 = r.left + r.width + MARGIN < width ? r.left + r.width + MARGIN : width;
    JDIMENSION crop_left = (JDIMENSION)x0, crop_width = (JDIMENSION)(x1 - x0);
    if (x1 - x0 < width) jpeg_crop_scanline(&cinfo, &crop_left, &crop_width);  /* widens to whole blocks */
    JSAMPARRAY row = (*cinfo.mem->alloc_sarray)((j_common_ptr)&cinfo, JPOOL_IMAGE, crop_width * 3, 1);
    int y0 = r.top > MARGIN ? r.top - MARGIN : 0;
    if (y0 > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
    size_t skip = (size_t)(r.left - (int)crop_left) * 3, line = (size_t)r.width * 3;
    for (int y = y0; y < r.top + r.height; y++) {
        jpeg_read_scanlines(&cinfo, row, 1);
        if (y >= r.top) memcpy(out + (size_t)(y - r.top) * line, row[0] + skip, line);
    }
    jpeg_abort_decompress(&cinfo);  /* the rows below the region are never entropy-decoded */
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

static PyObject *decode_region(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data, out;
    struct region r;
    if (!PyArg_ParseTuple(args, "y*w*iiiii", &data, &out, &r.reduction, &r.top, &r.left, &r.height, &r.width))
        return NULL;
    PyObject *result = NULL;
    if (r.reduction != 1 && r.reduction != 2 && r.reduction != 4 && r.reduction != 8) {
        PyErr_Format(PyExc_ValueError, "reduction must be 1, 2, 4 or 8, got %d", r.reduction);
    } else if (r.top < 0 || r.left < 0 || r.height < 1 || r.width < 1) {
        PyErr_Format(PyExc_ValueError, "region top %d, left %d, height %d, width %d: expected a non-empty region "
                     "at non-negative offsets", r.top, r.left, r.height, r.width);
    } else if (out.len != (Py_ssize_t)r.height * r.width * 3) {
        PyErr_Format(PyExc_ValueError, "out holds %zd bytes, expected %d x %d x 3", out.len, r.height, r.width);
    } else {
        struct strict_errors err;
        int failed;
        Py_BEGIN_ALLOW_THREADS
        failed = decode((const unsigned char *)data.buf, (size_t)data.len, (unsigned char *)out.buf, r, &err);
        Py_END_ALLOW_THREADS
        if (failed)
            PyErr_SetString(PyExc_ValueError, err.message);
        else
            result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS,
     "decode_region(data, out, reduction, top, left, height, width): one region of a JPEG decoded at DCT scale "
     "1/reduction into out (height * width * 3 bytes, RGB)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jpegcrop(void) { return PyModule_Create(&module); }
